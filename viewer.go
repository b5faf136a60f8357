package main

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"io/fs"
	"mime"
	"net"
	"net/http"
	"net/url"
	"path"
	"strconv"
	"time"
)

// The live event viewer: a page at / and its assets under /ui/, embedded in
// the binary so that it works where vCenters often are, behind networks
// that reach no CDN. The page uses only the public API.

// viewerFiles holds the page and its assets: plain HTML, CSS and JS, no
// build step.
//
//go:embed ui
var viewerFiles embed.FS

// viewerAssetPrefix is the path under which the page's assets are served.
const viewerAssetPrefix = "/ui/"

// viewerPolicy is the page's Content-Security-Policy: its own origin only,
// no inline script or style, no framing; the API is same-origin.
const viewerPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; " +
	"connect-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

// viewerAsset is one embedded file, ready to serve.
type viewerAsset struct {
	name        string
	content     []byte
	contentType string
	etag        string
}

// loadViewerAssets reads the embedded files once, with their ETags, so that
// browsers revalidate cheaply (304) instead of downloading again.
func loadViewerAssets() (map[string]viewerAsset, error) {
	assets := make(map[string]viewerAsset)
	err := fs.WalkDir(viewerFiles, "ui", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		content, err := viewerFiles.ReadFile(p)
		if err != nil {
			return fmt.Errorf("read embedded %s: %w", p, err)
		}
		sum := sha256.Sum256(content)
		ctype := mime.TypeByExtension(path.Ext(p))
		if ctype == "" {
			ctype = "application/octet-stream"
		}
		name := path.Base(p)
		assets[name] = viewerAsset{name: name, content: content, contentType: ctype, etag: `"` + hex.EncodeToString(sum[:12]) + `"`}
		return nil
	})
	return assets, err
}

// setPageSecurityHeaders sets the headers every page the server serves
// (the viewer and its assets, the login form) carries: its own policy, no
// referrer, no framing (instrument forbids sniffing for every answer).
func setPageSecurityHeaders(h http.Header, policy string) {
	h.Set("Content-Security-Policy", policy)
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Frame-Options", "DENY")
}

// setViewerHeaders sets the security headers of the page and its assets.
func setViewerHeaders(h http.Header) {
	setPageSecurityHeaders(h, viewerPolicy)
	// Revalidate every time (by ETag): a new binary serves its own page.
	h.Set("Cache-Control", "no-cache")
}

// serveViewerAsset answers with a, honouring If-None-Match.
func serveViewerAsset(w http.ResponseWriter, r *http.Request, a viewerAsset) {
	setViewerHeaders(w.Header())
	w.Header().Set("Content-Type", a.contentType)
	w.Header().Set("ETag", a.etag)
	http.ServeContent(w, r, a.name, time.Time{}, bytes.NewReader(a.content))
}

// handleViewerPage serves the page. Its query (type, eventclass, q) is
// read by the page itself, which shows the API's own answer to a bad
// filter, so any query is served.
func handleViewerPage(assets map[string]viewerAsset) routeHandler {
	page, ok := assets["index.html"]
	return func(w http.ResponseWriter, r *http.Request, _ url.Values) {
		if !ok {
			writeProblem(w, newProblem(http.StatusNotFound, "the viewer is not built into this binary"))
			return
		}
		serveViewerAsset(w, r, page)
	}
}

// handleViewerAsset serves the page's assets by name.
func handleViewerAsset(assets map[string]viewerAsset) routeHandler {
	return func(w http.ResponseWriter, r *http.Request, _ url.Values) {
		a, ok := assets[r.PathValue("asset")]
		if !ok {
			writeProblem(w, newProblem(http.StatusNotFound, "no such resource: %s", r.URL.Path))
			return
		}
		serveViewerAsset(w, r, a)
	}
}

// viewerURL is the page's address on a local listener, for people to open.
func viewerURL(addr net.Addr, https bool) string {
	port := "8080"
	if tcp, ok := addr.(*net.TCPAddr); ok {
		port = strconv.Itoa(tcp.Port)
	}
	scheme := "http"
	if https {
		scheme = "https"
	}
	return scheme + "://localhost:" + port + "/"
}
