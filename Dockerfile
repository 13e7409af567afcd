# pachgate: build with the Rust toolchain, run on a distroless base (glibc, CA bundle, no
# shell, non-root). `docker build -t pachgate:0.1.0 .`
# CI builds the runtime stage with buildah and runs it with podman as
# config/kubernetes/deployment.yaml describes (tests/container_image.rs, tests/image/build.sh).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin pachgate

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/pachgate /usr/local/bin/pachgate
USER 65532:65532
EXPOSE 8443 8080 9901
ENTRYPOINT ["/usr/local/bin/pachgate"]
CMD ["serve", "--config", "/etc/pachgate/pachgate.toml"]
