package main

import (
	_ "embed"
	"net/http"
	"strconv"
)

// openAPIDocument describes the whole HTTP API (OpenAPI 3.1).
//
//go:embed openapi.yaml
var openAPIDocument []byte

// handleOpenAPI serves the embedded OpenAPI document.
func handleOpenAPI() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, p := parseQuery(r.URL.RawQuery); p != nil {
			writeProblem(w, p)
			return
		}
		w.Header().Set("Content-Type", "application/yaml")
		w.Header().Set("Content-Length", strconv.Itoa(len(openAPIDocument)))
		_, _ = w.Write(openAPIDocument)
	})
}
