//go:build e2ecoverage

package server

import (
	"archive/tar"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"runtime/coverage"
)

// withCoverData serves CoverDataPath beside next: this process's coverage meta-data and
// counters, as they are now, as a tar of the files GOCOVERDIR would hold.
func withCoverData(next http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/", next)
	mux.HandleFunc("GET "+CoverDataPath, serveCoverData)
	return mux
}

func serveCoverData(w http.ResponseWriter, _ *http.Request) {
	dir, err := os.MkdirTemp("", "coverdata-")
	if err != nil {
		WriteError(w, http.StatusInternalServerError, "", err.Error())
		return
	}
	defer os.RemoveAll(dir)
	if err := coverage.WriteMetaDir(dir); err != nil {
		WriteError(w, http.StatusInternalServerError, "", fmt.Sprintf("writing coverage meta-data: %v (was the binary built with -cover?)", err))
		return
	}
	if err := coverage.WriteCountersDir(dir); err != nil {
		WriteError(w, http.StatusInternalServerError, "", fmt.Sprintf("writing coverage counters: %v", err))
		return
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		WriteError(w, http.StatusInternalServerError, "", err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/x-tar")
	tw := tar.NewWriter(w)
	for _, entry := range entries {
		data, err := os.ReadFile(filepath.Join(dir, entry.Name()))
		if err != nil {
			return // the status is sent; a short tar tells the client
		}
		hdr := &tar.Header{Name: entry.Name(), Mode: 0o644, Size: int64(len(data))}
		if tw.WriteHeader(hdr) != nil {
			return
		}
		if _, err := tw.Write(data); err != nil {
			return
		}
	}
	_ = tw.Close()
}
