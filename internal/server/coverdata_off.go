//go:build !e2ecoverage

package server

import "net/http"

// withCoverData adds nothing to builds without coverage; see coverdata.go.
func withCoverData(next http.Handler) http.Handler { return next }
