//! Protobuf messages, written by hand with prost. Field numbers match Pachyderm's protos
//! (`version/versionpb/version.proto`, `auth/auth.proto`) so real clients decode them.

use bytes::Bytes;

/// `google.protobuf.Empty`
#[derive(Clone, PartialEq, prost::Message)]
pub struct Empty {}

/// `versionpb_v2.Version`
#[derive(Clone, PartialEq, prost::Message)]
pub struct Version {
    #[prost(uint32, tag = "1")]
    pub major: u32,
    #[prost(uint32, tag = "2")]
    pub minor: u32,
    #[prost(uint32, tag = "3")]
    pub micro: u32,
    #[prost(string, tag = "4")]
    pub additional: String,
    #[prost(string, tag = "5")]
    pub git_commit: String,
    #[prost(string, tag = "6")]
    pub git_tree_modified: String,
    #[prost(string, tag = "7")]
    pub build_date: String,
    #[prost(string, tag = "8")]
    pub go_version: String,
    #[prost(string, tag = "9")]
    pub platform: String,
}

/// `google.protobuf.Timestamp`
#[derive(Clone, PartialEq, prost::Message)]
pub struct Timestamp {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

/// `auth_v2.WhoAmIRequest`
#[derive(Clone, PartialEq, prost::Message)]
pub struct WhoAmIRequest {}

/// `auth_v2.WhoAmIResponse`
#[derive(Clone, PartialEq, prost::Message)]
pub struct WhoAmIResponse {
    #[prost(string, tag = "1")]
    pub username: String,
    #[prost(message, optional, tag = "2")]
    pub expiration: Option<Timestamp>,
}

/// `auth_v2.AuthenticateRequest`
#[derive(Clone, PartialEq, prost::Message)]
pub struct AuthenticateRequest {
    #[prost(string, tag = "1")]
    pub oidc_state: String,
    #[prost(string, tag = "2")]
    pub id_token: String,
}

/// `auth_v2.AuthenticateResponse`
#[derive(Clone, PartialEq, prost::Message)]
pub struct AuthenticateResponse {
    #[prost(string, tag = "1")]
    pub pach_token: String,
}

/// What an echo call asks for. Unset fields mean "echo the payload back once".
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    #[prost(bytes = "bytes", tag = "1")]
    pub payload: Bytes,
    /// Server streaming: how many messages to send.
    #[prost(uint32, tag = "2")]
    pub response_count: u32,
    /// Size of each response payload; 0 echoes the request payload.
    #[prost(uint32, tag = "3")]
    pub response_size: u32,
    /// Server streaming: pause between messages.
    #[prost(uint32, tag = "4")]
    pub interval_ms: u32,
    /// Non-zero: end the call with this gRPC status (after any streamed messages), with
    /// status details and trailing metadata `x-standin-trailer: kept`.
    #[prost(int32, tag = "5")]
    pub fail_code: i32,
    #[prost(string, tag = "6")]
    pub fail_message: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoResponse {
    #[prost(bytes = "bytes", tag = "1")]
    pub payload: Bytes,
    /// Position of this message in its stream (0-based), or the message count for
    /// client streaming.
    #[prost(uint64, tag = "2")]
    pub sequence: u64,
    /// Client streaming: total payload bytes received.
    #[prost(uint64, tag = "3")]
    pub total_bytes: u64,
    /// Stats: WhoAmI calls the stand-in has answered.
    #[prost(uint64, tag = "4")]
    pub who_am_i_calls: u64,
    /// Stats: unary echo calls the stand-in has answered.
    #[prost(uint64, tag = "5")]
    pub unary_calls: u64,
}

/// `grpc.health.v1.HealthCheckRequest`
#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    pub service: String,
}

/// `grpc.health.v1.HealthCheckResponse`; `status` is the `ServingStatus` enum.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    pub status: i32,
}

/// `grpc.health.v1.HealthCheckResponse.ServingStatus` values.
pub mod serving_status {
    pub const UNKNOWN: i32 = 0;
    pub const SERVING: i32 = 1;
    pub const NOT_SERVING: i32 = 2;
    pub const SERVICE_UNKNOWN: i32 = 3;
}
