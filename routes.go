package main

import (
	"maps"
	"net/http"
	"net/url"
	"path"
	"slices"
	"strings"
)

// The route table: every route the server answers, listed once in routes
// with its method, its path, who may call it and which query it takes.
// newRouter serves the table: ServeMux matches the path (one pattern per
// path), the path's routes pick the one for the method (405 with the
// Allow header of the table otherwise), and the route requires a token
// (with tokens on), checks the query and calls its handler. Nothing routes
// a request twice.

// access says who may call a route with tokens on (API_TOKENS_PATH).
type access int

const (
	// apiRoute needs a listed token: a request without one gets 401.
	apiRoute access = iota
	// pageRoute needs one too, but a browser that navigates to it without one
	// is sent to the login form instead.
	pageRoute
	// openRoute needs none: kubelet calls the probes without a token.
	openRoute
	// loginRoute needs none and is served only with tokens on: the browser's
	// login form.
	loginRoute
)

// query says which query a route takes. The route checks it after the
// token (a 401 tells nothing about the query) and before the handler.
type query struct {
	params []string // the parameters taken, each once (but the filters) and with a value
	any    bool     // any query: the handler reads none, or the page reads it itself
}

// takes is the query of a route that takes params; with none, the route
// takes no query at all.
func takes(params ...string) query { return query{params: params} }

// anyQuery is the query of a route that serves whatever query it gets.
func anyQuery() query { return query{any: true} }

// check parses a request's raw query as q allows; values are nil for a
// route that takes any query.
func (q query) check(rawQuery string) (url.Values, *problem) {
	if q.any {
		return nil, nil
	}
	values, err := parseParams(rawQuery, q.params...)
	if err != nil {
		return nil, newProblem(http.StatusBadRequest, "%s", err)
	}
	return values, nil
}

// routeHandler answers a request on its route, with the query parameters
// the route checked.
type routeHandler func(w http.ResponseWriter, r *http.Request, params url.Values)

// route is one entry of the route table.
type route struct {
	method  string // GET (which answers HEAD as well) or POST
	path    string // a ServeMux path pattern
	access  access
	query   query
	handler routeHandler
}

// notFound is the catch-all route of path: it answers 404 for the paths
// that no other route takes, below path if it ends in a slash (as a
// ServeMux pattern of a subtree does). Metrics label them all "other".
func notFound(path string, a access) route {
	return route{http.MethodGet, path, a, anyQuery(), nil}
}

// catchAll reports whether the route is a catch-all (notFound).
func (rt route) catchAll() bool { return rt.handler == nil }

// routes is the route table: every route the server answers.
func (d handlerDeps) routes(metrics *httpMetrics, watches *watchLimit) []route {
	viewer, err := loadViewerAssets()
	if err != nil {
		d.log.Error("live event viewer unavailable", "error", err)
	}
	form := newLoginPage()
	get, post := http.MethodGet, http.MethodPost
	return []route{
		{get, "/api/v1/openapi.yaml", apiRoute, takes(), handleOpenAPI()},
		{get, "/api/v1/range", apiRoute, takes(), handleRange(d.journal)},
		{get, "/api/v1/events", apiRoute, takes(eventsParams()...), handleEvents(d.journal, watches, d.taken, d.sseHeartbeat, d.log)},
		{get, "/api/v1/events/{id}", apiRoute, takes(), handleEvent(d.journal)},
		{get, "/livez", openRoute, takes(), handleLivez(d.status)},
		{get, "/readyz", openRoute, takes(), handleReadyz(d.journal, d.status, d.sink, d.auth != nil)},
		{get, "/metrics", apiRoute, takes(), handleMetrics(d.journal, d.status, metrics, watches, d.sink)},
		// The viewer reads its query (type, eventclass, q) itself, and
		// shows the API's own answer to a bad filter.
		{get, "/{$}", pageRoute, anyQuery(), handleViewerPage(viewer)},
		{get, viewerAssetPrefix + "{asset}", pageRoute, anyQuery(), handleViewerAsset(viewer)},
		{get, loginPath, loginRoute, takes(paramNext), handleLoginForm(form)},
		{post, loginPath, loginRoute, anyQuery(), handleLogin(d.auth, form)},
		{post, logoutPath, loginRoute, anyQuery(), handleLogout()},
		// Every other path: 404, after a browser without a session has
		// signed in (it may have mistyped the viewer's address); under
		// the API's prefix, after a 401, as on the API's own paths.
		notFound("/api", apiRoute),
		notFound("/api/", apiRoute),
		notFound("/", pageRoute),
	}
}

// newRouter serves routes, requiring the tokens of auth (nil: none) where
// a route needs one.
func newRouter(routes []route, auth *tokenAuth) http.Handler {
	t := &router{mux: http.NewServeMux(), paths: make(map[string]*pathRoutes)}
	for _, rt := range routes {
		if rt.access == loginRoute && auth == nil {
			continue // without tokens there is nothing to sign in to
		}
		p := t.paths[rt.path]
		if p == nil {
			p = &pathRoutes{methods: make(map[string]*servedRoute)}
			t.paths[rt.path] = p
			t.mux.Handle(rt.path, p)
		}
		p.methods[rt.method] = rt.serve(auth)
	}
	for _, p := range t.paths {
		methods := slices.Collect(maps.Keys(p.methods))
		if p.methods[http.MethodGet] != nil {
			methods = append(methods, http.MethodHead)
		}
		slices.Sort(methods)
		p.allow = strings.Join(methods, ", ")
	}
	return t
}

// servedRoute is a route ready to serve.
type servedRoute struct {
	// guard wraps what answers on the route in what every answer on it
	// needs: its token (auth.require) and its name in r.Pattern, the label
	// of metrics and the debug log (none for a catch-all: "other").
	guard func(http.Handler) http.Handler
	// handler is guard's wrapping of the query's check and the route's
	// handler.
	handler http.Handler
}

// serve readies the route, requiring the tokens of auth where it needs one.
func (rt route) serve(auth *tokenAuth) *servedRoute {
	pattern := rt.method + " " + rt.path
	catchAll := rt.catchAll()
	guard := func(h http.Handler) http.Handler {
		if auth != nil && (rt.access == apiRoute || rt.access == pageRoute) {
			h = auth.require(h, rt.access == pageRoute)
		}
		if catchAll {
			return h
		}
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			r.Pattern = pattern
			h.ServeHTTP(w, r)
		})
	}
	answer := rt.handler
	if catchAll {
		answer = handleNotFound()
	}
	return &servedRoute{guard: guard, handler: guard(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		params, p := rt.query.check(r.URL.RawQuery)
		if p != nil {
			writeProblem(w, p)
			return
		}
		answer(w, r, params)
	}))}
}

// router serves the route table.
type router struct {
	mux   *http.ServeMux         // serves a request with the routes of its path
	paths map[string]*pathRoutes // by path pattern, as mux holds them
}

// ServeHTTP serves a request with the route of its path and method:
// ServeMux matches the path, its routes do the rest. A path that is not
// clean ("//api/v1/range") ServeMux would redirect to its clean form
// before anything the route checks; it is asked only which route that is,
// which then checks as ever (the method, the target's length, the token)
// and names itself, before the redirect.
func (t *router) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case !strings.HasPrefix(r.URL.Path, "/"):
		// "GET *" (or a CONNECT's host:port) has no path: ServeMux would
		// answer a bare 400, not a problem.
		if t.paths["/"].admit(w, r) != nil {
			writeProblem(w, newProblem(http.StatusBadRequest, "request target %q is not a path", r.RequestURI))
		}
	case r.Method != http.MethodConnect && cleanPath(r.URL.EscapedPath()) != r.URL.EscapedPath():
		redirect, pattern := t.mux.Handler(r)
		if rt := t.paths[pattern].admit(w, r); rt != nil {
			rt.guard(redirect).ServeHTTP(w, r)
		}
	default:
		t.mux.ServeHTTP(w, r)
	}
}

// cleanPath is the path ServeMux redirects p (escaped, as it cleans it)
// to: no "." or ".." elements, no repeated slashes, the trailing slash
// kept.
func cleanPath(p string) string {
	np := path.Clean(p)
	if strings.HasSuffix(p, "/") && np != "/" {
		np += "/"
	}
	return np
}

// pathRoutes are the routes of one path, by method.
type pathRoutes struct {
	methods map[string]*servedRoute
	allow   string // the methods, as the Allow header of a 405 lists them
}

// ServeHTTP serves a request on the path with the route of its method.
func (p *pathRoutes) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if rt := p.admit(w, r); rt != nil {
		rt.handler.ServeHTTP(w, r)
	}
}

// admit returns the route of the request's method (GET's for HEAD), or nil
// having answered what no route should see: a method the path does not
// take (405) or an overlong request target (414).
func (p *pathRoutes) admit(w http.ResponseWriter, r *http.Request) *servedRoute {
	method := r.Method
	if method == http.MethodHead {
		method = http.MethodGet
	}
	rt := p.methods[method]
	switch {
	case rt == nil:
		why := "this API is read-only"
		switch {
		case p.methods[http.MethodPost] != nil && p.methods[http.MethodGet] != nil:
			why = "the login form is read and posted"
		case p.methods[http.MethodPost] != nil:
			why = "signing out is a post"
		}
		w.Header().Set("Allow", p.allow)
		writeProblem(w, newProblem(http.StatusMethodNotAllowed, "method %s is not allowed: %s (allowed: %s)", r.Method, why, p.allow))
	case len(r.RequestURI) > maxRequestTarget:
		writeProblem(w, newProblem(http.StatusRequestURITooLong, "request target is %d bytes, more than %d", len(r.RequestURI), maxRequestTarget))
	default:
		return rt
	}
	return nil
}
