# syntax=docker/dockerfile:1
# One image for every kubegate service (authz, extproc, xds) and the CLI: a static
# binary on a distroless base, running as uid 65532 (nonroot).

FROM golang:1.26-bookworm AS build
WORKDIR /src
# Modules first, so a source change does not download them again.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w -X main.version=${VERSION}" -o /out/kubegate ./cmd/kubegate

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/kubegate /usr/local/bin/kubegate
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/kubegate"]
