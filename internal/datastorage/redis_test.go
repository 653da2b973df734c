package datastorage

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// ---- the protocol ----------------------------------------------------------

func TestWriteCommand(t *testing.T) {
	var buf bytes.Buffer
	w := bufio.NewWriter(&buf)
	writeCommand(w, []string{"RPUSH", "k", "", "ü\r\n"})
	w.Flush()
	want := "*4\r\n$5\r\nRPUSH\r\n$1\r\nk\r\n$0\r\n\r\n$4\r\nü\r\n\r\n"
	if buf.String() != want {
		t.Fatalf("got %q, want %q", buf.String(), want)
	}
}

func TestReadReply(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want any
	}{
		{"+OK\r\n", "OK"},
		{":42\r\n", int64(42)},
		{":-1\r\n", int64(-1)},
		{"$5\r\nhe\r\nl\r\n", "he\r\nl"},
		{"$0\r\n\r\n", ""},
		{"$-1\r\n", nil},
		{"*-1\r\n", nil},
		{"*0\r\n", []any{}},
		{"*3\r\n$1\r\na\r\n:2\r\n*1\r\n+c\r\n", []any{"a", int64(2), []any{"c"}}},
		// An error inside an array is an element, and the array is read to its end.
		{"*2\r\n-ERR one\r\n+two\r\n", []any{RedisError("ERR one"), "two"}},
	} {
		r := bufio.NewReader(strings.NewReader(tc.in + "+NEXT\r\n"))
		got, err := readReply(r, 0)
		if err != nil || fmt.Sprintf("%#v", got) != fmt.Sprintf("%#v", tc.want) {
			t.Errorf("%q: got %#v, %v, want %#v", tc.in, got, err, tc.want)
			continue
		}
		// Exactly one reply was consumed: the next one is intact.
		if next, err := readReply(r, 0); next != "NEXT" || err != nil {
			t.Errorf("%q: the reply after it reads %#v, %v", tc.in, next, err)
		}
	}
}

func TestReadReplyErrors(t *testing.T) {
	var redisErr RedisError
	_, err := readReply(bufio.NewReader(strings.NewReader("-WRONGTYPE no\r\n")), 0)
	if !errors.As(err, &redisErr) || redisErr != "WRONGTYPE no" || err.Error() != "redis replied: WRONGTYPE no" {
		t.Fatalf("error reply: %v", err)
	}
	deep := strings.Repeat("*1\r\n", maxReplyNest+1) + ":1\r\n"
	for _, in := range []string{
		"",                                       // connection closed
		"+OK\n",                                  // no CR
		"\r\n",                                   // empty line
		"?what\r\n",                              // unknown type
		":12x\r\n",                               // bad integer
		"$3\r\nab",                               // short bulk
		"$2\r\nabcd\r\n",                         // bulk longer than announced
		"$-2\r\n",                                // bad length
		"$99999999999\r\n",                       // too long
		"*2\r\n+a\r\n",                           // short array
		"+" + strings.Repeat("x", 5000) + "\r\n", // longer than the read buffer
		deep,
	} {
		got, err := readReply(bufio.NewReader(strings.NewReader(in)), 0)
		if err == nil || errors.As(err, &redisErr) {
			t.Errorf("%.40q: got %#v, %v, want a protocol or I/O error", in, got, err)
		}
	}
}

// ---- the store, against a fake Redis and (where installed) the real one ----

func TestRedisStoreOnFakeRedis(t *testing.T) {
	testStore(t, func(t *testing.T, maxEvents int) Store {
		return NewRedisStore(startFakeRedis(t).addr, maxEvents)
	})
}

func TestRedisStoreOnRealRedis(t *testing.T) {
	testStore(t, func(t *testing.T, maxEvents int) Store {
		return NewRedisStore(startRealRedis(t), maxEvents)
	})
}

// Events written by one store are read by the next one on the same Redis, as
// after a restart of the service, and IDs go on where they stopped.
func TestRedisStoreOutlivesItsProcess(t *testing.T) {
	for name, start := range map[string]func(*testing.T) string{
		"fake": func(t *testing.T) string { return startFakeRedis(t).addr },
		"real": startRealRedis,
	} {
		t.Run(name, func(t *testing.T) {
			addr, ctx := start(t), context.Background()
			first := NewRedisStore(addr, 10)
			if _, err := first.Add(ctx, Event{Fingerprint: "fp", Count: 1}, t0); err != nil {
				t.Fatal(err)
			}
			first.Close()
			second := NewRedisStore(addr, 10)
			defer second.Close()
			stored, err := second.Add(ctx, Event{Fingerprint: "fp", Count: 2}, t0)
			if err != nil || stored.ID != 2 {
				t.Fatalf("add after restart: %#v, %v, want ID 2", stored, err)
			}
			got, err := second.ByFingerprint(ctx, "fp")
			if err != nil || len(got) != 2 || got[0].ID != 1 || got[0].Count != 1 || got[1].ID != 2 {
				t.Fatalf("events after restart: %#v, %v", got, err)
			}
		})
	}
}

func TestRedisClientReusesConnections(t *testing.T) {
	fake := startFakeRedis(t)
	store := NewRedisStore(fake.addr, 10)
	defer store.Close()
	ctx := context.Background()
	for i := 0; i < 5; i++ {
		if err := store.Ping(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// An error reply leaves the connection in a known state: it is reused too.
	if _, err := store.client.do(ctx, "NOSUCH"); !strings.Contains(fmt.Sprint(err), "unknown command") {
		t.Fatalf("unknown command: %v", err)
	}
	if err := store.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	if n := fake.connections(); n != 1 {
		t.Fatalf("%d connections for sequential commands, want 1", n)
	}
}

func TestRedisStoreErrorsNameRedisAndTheCommand(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	store := NewRedisStore(addr, 10)
	ctx := context.Background()
	_, addErr := store.Add(ctx, Event{Fingerprint: "a"}, t0)
	_, readErr := store.ByFingerprint(ctx, "a")
	_, lenErr := store.Len(ctx)
	for _, err := range []error{addErr, readErr, lenErr, store.Ping(ctx)} {
		if err == nil || !strings.Contains(err.Error(), "redis at "+addr) || errors.Is(err, ErrFull) {
			t.Errorf("got %v, want an error naming redis at %s", err, addr)
		}
	}
	if !strings.Contains(addErr.Error(), "INCR") || !strings.Contains(readErr.Error(), "LRANGE") {
		t.Errorf("errors do not name the command: %v; %v", addErr, readErr)
	}
}

// A Redis that accepts and never answers: the context's end, or the client's
// own timeout, ends the command; the connection is not reused.
func TestRedisClientGivesUpOnASilentServer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	client := newRedisClient(ln.Addr().String(), 200*time.Millisecond)
	start := time.Now()
	if _, err := client.do(context.Background(), "PING"); err == nil || time.Since(start) > 5*time.Second {
		t.Fatalf("timeout: %v after %v", err, time.Since(start))
	}
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	client.timeout = 10 * time.Second
	start = time.Now()
	if _, err := client.do(ctx, "PING"); !errors.Is(err, context.Canceled) || time.Since(start) > 5*time.Second {
		t.Fatalf("cancelled: %v after %v", err, time.Since(start))
	}
	if len(client.idle) != 0 {
		t.Fatalf("a connection that timed out was kept for reuse")
	}
}

// ---- the service with Redis ------------------------------------------------

func TestHandlerWithRedisDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	h := NewHandler(discard(), NewRedisStore(addr, 10), time.Now)

	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
	var ready struct{ Status, Store, Error string }
	json.Unmarshal(rec.Body.Bytes(), &ready)
	if rec.Code != http.StatusServiceUnavailable || ready.Status != "not ready" || ready.Store != "redis" ||
		!strings.Contains(ready.Error, addr) {
		t.Fatalf("readyz: %d %s", rec.Code, rec.Body)
	}
	if rec := post(t, h, validEvent); rec.Code != http.StatusServiceUnavailable || !strings.Contains(rec.Body.String(), "redis store unavailable") {
		t.Fatalf("post: %d %s", rec.Code, rec.Body)
	}
	get := httptest.NewRecorder()
	h.ServeHTTP(get, httptest.NewRequest(http.MethodGet, EventsPath+"?fingerprint=fp1", nil))
	if get.Code != http.StatusServiceUnavailable {
		t.Fatalf("get: %d %s", get.Code, get.Body)
	}
	healthz := httptest.NewRecorder()
	h.ServeHTTP(healthz, httptest.NewRequest(http.MethodGet, "/healthz", nil))
	if healthz.Code != http.StatusOK {
		t.Fatalf("healthz: %d, want 200 (the process is alive)", healthz.Code)
	}
}

func TestHandlerWithRedis(t *testing.T) {
	fake := startFakeRedis(t)
	h := NewHandler(discard(), NewRedisStore(fake.addr, 1), time.Now)
	if rec := post(t, h, validEvent); rec.Code != http.StatusCreated {
		t.Fatalf("post: %d %s", rec.Code, rec.Body)
	}
	if rec := post(t, h, validEvent); rec.Code != http.StatusInsufficientStorage {
		t.Fatalf("post to a full store: %d %s", rec.Code, rec.Body)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
	if rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), `"store":"redis"`) ||
		!strings.Contains(rec.Body.String(), `"events":1`) {
		t.Fatalf("readyz: %d %s", rec.Code, rec.Body)
	}
}

func TestWaitForRedis(t *testing.T) {
	var logs bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()

	err = WaitForRedis(context.Background(), logger, NewRedisStore(addr, 1), 300*time.Millisecond)
	if !errors.Is(err, errRedisTimeout) || !strings.Contains(err.Error(), addr) ||
		!strings.Contains(err.Error(), "DATASTORAGE_REDIS_ADDR") {
		t.Fatalf("nothing there: %v", err)
	}
	if !strings.Contains(logs.String(), "waiting for redis") {
		t.Fatalf("no log that it waits:\n%s", logs.String())
	}

	// Redis comes up while we wait.
	fake := &fakeRedis{data: map[string]any{}}
	time.AfterFunc(300*time.Millisecond, func() { fake.serve(t, addr) })
	logs.Reset()
	if err := WaitForRedis(context.Background(), logger, NewRedisStore(addr, 1), 30*time.Second); err != nil {
		t.Fatalf("redis came up: %v", err)
	}
	if !strings.Contains(logs.String(), "redis answers") {
		t.Fatalf("no log that redis answers:\n%s", logs.String())
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := WaitForRedis(ctx, logger, NewRedisStore("127.0.0.1:1", 1), time.Hour); err != nil {
		t.Fatalf("cancelled: %v", err)
	}
}

// Run with Redis: it serves while it waits (not ready), and gives up after
// DATASTORAGE_REDIS_WAIT with an error that says why.
func TestRunGivesUpWhenRedisNeverAnswers(t *testing.T) {
	listen, redisAddr := freeAddr(t), freeAddr(t)
	env := map[string]string{"LISTEN_ADDR": listen, "DATASTORAGE_REDIS_ADDR": redisAddr, "DATASTORAGE_REDIS_WAIT": "3s"}
	done := make(chan error, 1)
	go func() { done <- Run(context.Background(), discard(), func(k string) string { return env[k] }) }()
	status := waitForStatus(t, "http://"+listen+"/readyz")
	if status != http.StatusServiceUnavailable {
		t.Fatalf("readyz while redis does not answer: %d, want 503", status)
	}
	select {
	case err := <-done:
		if !errors.Is(err, errRedisTimeout) || !strings.Contains(err.Error(), redisAddr) {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not give up on redis")
	}
}

// Two runs of the service on one Redis: what the first stored, the second
// serves.
func TestRunKeepsEventsAcrossRestartsInRedis(t *testing.T) {
	fake := startFakeRedis(t)
	listen := freeAddr(t)
	env := map[string]string{"LISTEN_ADDR": listen, "DATASTORAGE_REDIS_ADDR": fake.addr}
	run := func() (stop func()) {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- Run(ctx, discard(), func(k string) string { return env[k] }) }()
		if status := waitForStatus(t, "http://"+listen+"/readyz"); status != http.StatusOK {
			t.Fatalf("readyz: %d", status)
		}
		return func() {
			cancel()
			if err := <-done; err != nil {
				t.Fatalf("Run: %v", err)
			}
		}
	}
	stop := run()
	resp, err := http.Post("http://"+listen+EventsPath, "application/json", strings.NewReader(validEvent))
	if err != nil || resp.StatusCode != http.StatusCreated {
		t.Fatalf("post: %v %v", resp, err)
	}
	resp.Body.Close()
	stop()

	defer run()()
	resp, err = http.Get("http://" + listen + EventsPath + "?fingerprint=fp1")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct{ Events []Event }
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || len(body.Events) != 1 || body.Events[0].ID != 1 {
		t.Fatalf("after restart: %#v, %v", body, err)
	}
}

// ---- helpers ---------------------------------------------------------------

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// waitForStatus GETs url until it answers and returns the status.
func waitForStatus(t *testing.T, url string) int {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			return resp.StatusCode
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never answered: %v", url, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// startRealRedis runs Debian's redis-server on a free loopback port until the
// test ends, and returns its address; the test is skipped without it.
func startRealRedis(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Skip("redis-server is not installed (Debian: apt-get install redis-server)")
	}
	addr := freeAddr(t)
	_, port, _ := net.SplitHostPort(addr)
	cmd := exec.Command(bin, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", t.TempDir())
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	store := NewRedisStore(addr, 1)
	defer store.Close()
	if err := WaitForRedis(context.Background(), discard(), store, 10*time.Second); err != nil {
		t.Fatalf("redis-server: %v\n%s", err, out.String())
	}
	return addr
}

// fakeRedis answers the commands RedisStore sends, as Redis does, from memory.
type fakeRedis struct {
	addr string
	mu   sync.Mutex
	data map[string]any // string or []string
	seen int            // connections accepted
}

func startFakeRedis(t *testing.T) *fakeRedis {
	f := &fakeRedis{data: map[string]any{}}
	f.serve(t, "127.0.0.1:0")
	return f
}

func (f *fakeRedis) connections() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.seen
}

func (f *fakeRedis) serve(t *testing.T, addr string) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Error(err)
		return
	}
	f.addr = ln.Addr().String()
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			f.mu.Lock()
			f.seen++
			f.mu.Unlock()
			go f.handle(conn)
		}
	}()
}

func (f *fakeRedis) handle(conn net.Conn) {
	defer conn.Close()
	r, w := bufio.NewReader(conn), bufio.NewWriter(conn)
	for {
		cmd, err := readReply(r, 0)
		args, ok := cmd.([]any)
		if err != nil || !ok || len(args) == 0 {
			return
		}
		f.mu.Lock()
		reply := f.apply(args)
		f.mu.Unlock()
		io.WriteString(w, reply)
		if w.Flush() != nil {
			return
		}
	}
}

func (f *fakeRedis) apply(args []any) string {
	arg := func(i int) string { return args[i].(string) }
	switch strings.ToUpper(arg(0)) {
	case "PING":
		return "+PONG\r\n"
	case "INCR":
		n, _ := strconv.ParseInt(fmt.Sprint(f.data[arg(1)]), 10, 64)
		f.data[arg(1)] = strconv.FormatInt(n+1, 10)
		return fmt.Sprintf(":%d\r\n", n+1)
	case "GET":
		v, ok := f.data[arg(1)].(string)
		if !ok {
			return "$-1\r\n"
		}
		return fmt.Sprintf("$%d\r\n%s\r\n", len(v), v)
	case "RPUSH":
		list, _ := f.data[arg(1)].([]string)
		list = append(list, arg(2))
		f.data[arg(1)] = list
		return fmt.Sprintf(":%d\r\n", len(list))
	case "LRANGE": // only 0 -1
		list, _ := f.data[arg(1)].([]string)
		out := fmt.Sprintf("*%d\r\n", len(list))
		for _, v := range list {
			out += fmt.Sprintf("$%d\r\n%s\r\n", len(v), v)
		}
		return out
	}
	return fmt.Sprintf("-ERR unknown command '%s'\r\n", arg(0))
}
