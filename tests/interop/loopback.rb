# Loaded before the gRPC interop server (ruby -r): the server binds 0.0.0.0 itself; tests
# must listen on loopback only, so bind requests are rewritten to 127.0.0.1.
#
# Tests start the server with `--port 0` and read the port it got from the line printed here
# (a port picked by the test beforehand could be taken by another test's listener first).
#
# The server's thread pool is also raised from 30 to 128 workers. A worker that has sent its
# answer rejoins the pool only when Ruby next schedules it, so on a loaded machine a client
# that starts its next call at once (`pachgate bench` keeps 16 calls in flight) can find all 30
# still away and get RESOURCE_EXHAUSTED, "No free threads in thread pool": load shedding by
# the test server, not behaviour of the client under test.
require 'grpc'

module PachgateLoopbackOnly
  def initialize(**options)
    super(**{ pool_size: 128 }.merge(options))
  end

  def add_http2_port(host, creds)
    port = super(host.sub(/\A0\.0\.0\.0:/, '127.0.0.1:'), creds)
    $stdout.puts "interop server bound 127.0.0.1:#{port}"
    $stdout.flush
    port
  end
end

GRPC::RpcServer.prepend(PachgateLoopbackOnly)
