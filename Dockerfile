# syntax=docker/dockerfile:1
# One image, four binaries (ksr-watcher, ksr-publisher-vulcand, ksr-publisher-consul, ksrctl):
# they share almost all their code and dependencies, are released together under one version,
# and a Deployment picks its binary with `command:` — one build, one scan, one tag to roll.
#
#   docker build --build-arg KSR_GIT_COMMIT=$(git rev-parse HEAD) -t <registry>/kube-service-router:0.1.0 .
#
# The manifests name it `ksr`; deploy/kubernetes/base/kustomization.yaml `images:` maps that to
# your registry and tag.

# The minimum Rust the workspace declares (rust-version), pinned.
ARG RUST_IMAGE=rust:1.89-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS build
# etcd-client compiles etcd's protobuf definitions.
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
ARG KSR_GIT_COMMIT=unknown
ENV KSR_GIT_COMMIT=${KSR_GIT_COMMIT}
RUN cargo build --release --locked \
      -p ksr-watcher -p ksr-publisher-vulcand -p ksr-publisher-consul -p ksrctl \
 && mkdir -p /out \
 && cp target/release/ksr-watcher target/release/ksr-publisher-vulcand \
       target/release/ksr-publisher-consul target/release/ksrctl /out/ \
 && for b in /out/*; do "$b" --version; done

FROM ${RUNTIME_IMAGE}
ARG KSR_GIT_COMMIT=unknown
LABEL org.opencontainers.image.title="kube-service-router" \
      org.opencontainers.image.description="Kubernetes Services routed at a vulcand edge and resolvable in Consul DNS" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.revision="${KSR_GIT_COMMIT}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/kube-service-router/kube-service-router"
COPY --from=build /out/ /usr/local/bin/
# distroless's nonroot user, as the manifests' runAsUser.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/ksr-watcher"]
