//go:build e2ecoverage

package server

import (
	"archive/tar"
	"bytes"
	"fmt"
	"net/http"
	"os"
	"runtime/coverage"
	"time"
)

// withCoverData serves CoverDataPath beside next: this process's coverage meta-data and
// counters, as they are now, as a tar of the files GOCOVERDIR would hold.
func withCoverData(next http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/", next)
	mux.HandleFunc("GET "+CoverDataPath, serveCoverData)
	return mux
}

// serveCoverData streams the data from memory: the images are built FROM scratch, with no
// writable directory (not even /tmp) to stage files in.
func serveCoverData(w http.ResponseWriter, _ *http.Request) {
	files, err := coverDataFiles()
	if err != nil {
		WriteError(w, http.StatusInternalServerError, "", err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/x-tar")
	tw := tar.NewWriter(w)
	for _, f := range files {
		hdr := &tar.Header{Name: f.name, Mode: 0o644, Size: int64(len(f.data)), ModTime: time.Now()}
		if tw.WriteHeader(hdr) != nil {
			return // the status is sent; a short tar tells the client
		}
		if _, err := tw.Write(f.data); err != nil {
			return
		}
	}
	_ = tw.Close()
}

type coverFile struct {
	name string
	data []byte
}

// coverDataFiles returns the meta-data and counter files under the names
// runtime/coverage.WriteMetaDir and WriteCountersDir would give them: covmeta.<hash> and
// covcounters.<hash>.<pid>.<nanotime>, the hash being the one both files carry in their header.
func coverDataFiles() ([]coverFile, error) {
	var meta, counters bytes.Buffer
	if err := coverage.WriteMeta(&meta); err != nil {
		return nil, fmt.Errorf("writing coverage meta-data: %v (was the binary built with -cover?)", err)
	}
	if err := coverage.WriteCounters(&counters); err != nil {
		return nil, fmt.Errorf("writing coverage counters: %v", err)
	}
	// internal/coverage: MetaFileHeader has the hash at byte 24, CounterFileHeader at byte 8.
	const metaHashAt, counterHashAt, hashLen = 24, 8, 16
	if meta.Len() < metaHashAt+hashLen || counters.Len() < counterHashAt+hashLen {
		return nil, fmt.Errorf("coverage data too short (%d and %d bytes): not a format this service knows", meta.Len(), counters.Len())
	}
	hash := meta.Bytes()[metaHashAt : metaHashAt+hashLen]
	if !bytes.Equal(hash, counters.Bytes()[counterHashAt:counterHashAt+hashLen]) {
		return nil, fmt.Errorf("coverage meta-data and counters name different builds: not a format this service knows")
	}
	return []coverFile{
		{fmt.Sprintf("covmeta.%x", hash), meta.Bytes()},
		{fmt.Sprintf("covcounters.%x.%d.%d", hash, os.Getpid(), time.Now().UnixNano()), counters.Bytes()},
	}, nil
}
