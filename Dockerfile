# The vSphere Event Streaming server: a static binary on distroless.
#   docker build -t vsphere-event-streaming .
# (ko builds the same image without Docker; see .ko.yaml.)

FROM golang:1.26 AS build
WORKDIR /src
# Dependencies first, so that source changes reuse the cached download layer.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# Static (no cgo) so that it runs on distroless/static; -trimpath and -s -w
# keep build paths and symbols out of the image.
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /server .

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /server /server
# Numeric, so that Kubernetes can verify runAsNonRoot (deploy/deployment.yaml
# runs as the same id).
USER 65532:65532
# The default PORT.
EXPOSE 8080
ENTRYPOINT ["/server"]
