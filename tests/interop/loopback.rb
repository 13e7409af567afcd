# Loaded before the gRPC interop server (ruby -r): the server binds 0.0.0.0 itself; tests
# must listen on loopback only, so bind requests are rewritten to 127.0.0.1.
require 'grpc'

module PachgateLoopbackOnly
  def add_http2_port(host, creds)
    super(host.sub(/\A0\.0\.0\.0:/, '127.0.0.1:'), creds)
  end
end

GRPC::RpcServer.prepend(PachgateLoopbackOnly)
