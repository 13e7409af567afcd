//! Generates tonic service code for the stand-in pachd from hand-written prost messages, so
//! building needs no `protoc`. Paths and field numbers follow Pachyderm's protos.

use tonic_build::manual::{Builder, Method, Service};

const CODEC: &str = "tonic_prost::ProstCodec";

fn method(
    name: &str,
    route: &str,
    input: &str,
    output: &str,
) -> tonic_build::manual::MethodBuilder {
    Method::builder()
        .name(name)
        .route_name(route)
        .input_type(input)
        .output_type(output)
        .codec_path(CODEC)
}

fn main() {
    let version = Service::builder()
        .name("API")
        .package("versionpb_v2")
        .method(
            method(
                "get_version",
                "GetVersion",
                "crate::messages::Empty",
                "crate::messages::Version",
            )
            .build(),
        )
        .build();
    let auth = Service::builder()
        .name("API")
        .package("auth_v2")
        .method(
            method(
                "who_am_i",
                "WhoAmI",
                "crate::messages::WhoAmIRequest",
                "crate::messages::WhoAmIResponse",
            )
            .build(),
        )
        .method(
            method(
                "authenticate",
                "Authenticate",
                "crate::messages::AuthenticateRequest",
                "crate::messages::AuthenticateResponse",
            )
            .build(),
        )
        .build();
    let echo_in = "crate::messages::EchoRequest";
    let echo_out = "crate::messages::EchoResponse";
    let echo = Service::builder()
        .name("Echo")
        .package("pachgate.standin")
        .method(method("unary", "Unary", echo_in, echo_out).build())
        .method(method("stats", "Stats", echo_in, echo_out).build())
        .method(
            method("server_stream", "ServerStream", echo_in, echo_out)
                .server_streaming()
                .build(),
        )
        .method(
            method("client_stream", "ClientStream", echo_in, echo_out)
                .client_streaming()
                .build(),
        )
        .method(
            method("bidi", "Bidi", echo_in, echo_out)
                .client_streaming()
                .server_streaming()
                .build(),
        )
        .build();
    // The standard gRPC health service, which pachd registers.
    let health = Service::builder()
        .name("Health")
        .package("grpc.health.v1")
        .method(
            method(
                "check",
                "Check",
                "crate::messages::HealthCheckRequest",
                "crate::messages::HealthCheckResponse",
            )
            .build(),
        )
        .method(
            method(
                "watch",
                "Watch",
                "crate::messages::HealthCheckRequest",
                "crate::messages::HealthCheckResponse",
            )
            .server_streaming()
            .build(),
        )
        .build();
    Builder::new()
        .build_transport(false)
        .compile(&[version, auth, echo, health]);
    println!("cargo:rerun-if-changed=build.rs");
}
