package main

import (
	_ "embed"
	"net/http"
	"net/url"
	"strconv"
)

// openAPIDocument describes the whole HTTP API (OpenAPI 3.1).
//
//go:embed openapi.yaml
var openAPIDocument []byte

// handleOpenAPI serves the embedded OpenAPI document.
func handleOpenAPI() routeHandler {
	return func(w http.ResponseWriter, _ *http.Request, _ url.Values) {
		w.Header().Set("Content-Type", "application/yaml")
		w.Header().Set("Content-Length", strconv.Itoa(len(openAPIDocument)))
		_, _ = w.Write(openAPIDocument)
	}
}
