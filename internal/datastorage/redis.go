package datastorage

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"time"
)

// Redis keys of the RedisStore. One store per Redis database.
const (
	// redisNextIDKey holds the last ID handed out. Every Add increments it, so IDs
	// are unique across restarts and replicas.
	redisNextIDKey = "datastorage:next-id"
	// redisEventsKeyPrefix + fingerprint is a list of that fingerprint's events,
	// as JSON, in the order they were stored.
	redisEventsKeyPrefix = "datastorage:events:"
)

// RedisStore is the Store in Redis: events outlive the process, and every
// read comes from Redis. It speaks RESP2 over TCP to one address; no
// authentication, database 0.
//
// An ID is taken (INCR) before the event is written (RPUSH): an event whose
// write fails leaves a gap in the IDs and still counts against Max. The
// client got an error for it, and an audit trail must not reuse an ID.
type RedisStore struct {
	client *redisClient
	max    int
}

// NewRedisStore returns a store in the Redis at addr (host:port) that holds at
// most maxEvents events. It does not connect until first used.
func NewRedisStore(addr string, maxEvents int) *RedisStore {
	return &RedisStore{client: newRedisClient(addr, 5*time.Second), max: maxEvents}
}

// Add implements Store.
func (s *RedisStore) Add(ctx context.Context, e Event, now time.Time) (Event, error) {
	id, err := s.client.integer(ctx, "INCR", redisNextIDKey)
	if err != nil {
		return Event{}, err
	}
	if id > int64(s.max) {
		return Event{}, ErrFull
	}
	e.ID, e.StoredAt = id, now
	b, err := json.Marshal(e)
	if err != nil {
		return Event{}, err
	}
	if _, err := s.client.integer(ctx, "RPUSH", redisEventsKeyPrefix+e.Fingerprint, string(b)); err != nil {
		return Event{}, err
	}
	return e, nil
}

// ByFingerprint implements Store.
func (s *RedisStore) ByFingerprint(ctx context.Context, fp string) ([]Event, error) {
	reply, err := s.client.do(ctx, "LRANGE", redisEventsKeyPrefix+fp, "0", "-1")
	if err != nil {
		return nil, err
	}
	items, ok := reply.([]any)
	if !ok && reply != nil {
		return nil, s.client.unexpected("LRANGE", reply)
	}
	out := make([]Event, 0, len(items))
	for _, item := range items {
		text, ok := item.(string)
		if !ok {
			return nil, s.client.unexpected("LRANGE", reply)
		}
		var e Event
		if err := json.Unmarshal([]byte(text), &e); err != nil {
			return nil, fmt.Errorf("redis at %s: an event of %q is not JSON: %w", s.client.addr, fp, err)
		}
		out = append(out, e)
	}
	return out, nil
}

// Len implements Store: the IDs handed out, up to Max (see RedisStore).
func (s *RedisStore) Len(ctx context.Context) (int, error) {
	reply, err := s.client.do(ctx, "GET", redisNextIDKey)
	if err != nil || reply == nil {
		return 0, err
	}
	text, ok := reply.(string)
	n, convErr := strconv.ParseInt(text, 10, 64)
	if !ok || convErr != nil || n < 0 {
		return 0, s.client.unexpected("GET "+redisNextIDKey, reply)
	}
	return int(min(n, int64(s.max))), nil
}

// Max implements Store.
func (s *RedisStore) Max() int { return s.max }

// Kind implements Store.
func (s *RedisStore) Kind() string { return "redis" }

// Addr is the Redis address the store uses.
func (s *RedisStore) Addr() string { return s.client.addr }

// Ping returns nil when Redis answers PING.
func (s *RedisStore) Ping(ctx context.Context) error {
	reply, err := s.client.do(ctx, "PING")
	if err != nil {
		return err
	}
	if reply != "PONG" {
		return s.client.unexpected("PING", reply)
	}
	return nil
}

// Close closes the idle connections.
func (s *RedisStore) Close() error { return s.client.close() }

// ---- RESP2 client ----------------------------------------------------------

// Limits on what a reply may claim, so a broken or hostile server cannot make
// us allocate without bound.
const (
	maxBulkLen   = 64 << 20
	maxArrayLen  = 1 << 20
	maxReplyNest = 8
	maxIdleConns = 4
)

// RedisError is an error reply of Redis ("-ERR ..."): the connection is fine.
type RedisError string

func (e RedisError) Error() string { return "redis replied: " + string(e) }

// redisClient sends one command at a time per connection and keeps a few idle
// connections for reuse. A connection that fails in any way but a Redis error
// reply is closed, never reused. Nothing is retried (a retried INCR or RPUSH
// could apply twice): after a restart of Redis, each idle connection fails the
// one command that finds it closed (a 503), and /readyz clears them too.
type redisClient struct {
	addr    string
	timeout time.Duration // per command, unless the context ends sooner

	mu   sync.Mutex
	idle []*redisConn
}

type redisConn struct {
	net.Conn
	r *bufio.Reader
	w *bufio.Writer
}

func newRedisClient(addr string, timeout time.Duration) *redisClient {
	return &redisClient{addr: addr, timeout: timeout}
}

// do sends the command args and returns its reply: string (simple or bulk),
// int64, nil (a nil bulk or array), []any, or a RedisError.
func (c *redisClient) do(ctx context.Context, args ...string) (any, error) {
	conn, err := c.get(ctx)
	if err != nil {
		return nil, fmt.Errorf("redis at %s: %s: %w", c.addr, args[0], err)
	}
	reply, err := conn.do(ctx, c.timeout, args)
	var redisErr RedisError
	if err != nil && !errors.As(err, &redisErr) {
		conn.Close()
		return nil, fmt.Errorf("redis at %s: %s: %w", c.addr, args[0], err)
	}
	c.put(conn)
	if err != nil {
		return nil, fmt.Errorf("redis at %s: %s: %w", c.addr, args[0], err)
	}
	return reply, nil
}

// integer is do for commands that reply with an integer.
func (c *redisClient) integer(ctx context.Context, args ...string) (int64, error) {
	reply, err := c.do(ctx, args...)
	if err != nil {
		return 0, err
	}
	n, ok := reply.(int64)
	if !ok {
		return 0, c.unexpected(args[0], reply)
	}
	return n, nil
}

func (c *redisClient) unexpected(command string, reply any) error {
	return fmt.Errorf("redis at %s: %s: unexpected reply %#v (is this Redis?)", c.addr, command, reply)
}

func (c *redisClient) get(ctx context.Context) (*redisConn, error) {
	c.mu.Lock()
	if n := len(c.idle); n > 0 {
		conn := c.idle[n-1]
		c.idle = c.idle[:n-1]
		c.mu.Unlock()
		return conn, nil
	}
	c.mu.Unlock()
	d := net.Dialer{Timeout: c.timeout}
	conn, err := d.DialContext(ctx, "tcp", c.addr)
	if err != nil {
		return nil, err
	}
	return &redisConn{Conn: conn, r: bufio.NewReader(conn), w: bufio.NewWriter(conn)}, nil
}

func (c *redisClient) put(conn *redisConn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.idle) >= maxIdleConns {
		conn.Close()
		return
	}
	c.idle = append(c.idle, conn)
}

func (c *redisClient) close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	var errs []error
	for _, conn := range c.idle {
		errs = append(errs, conn.Close())
	}
	c.idle = nil
	return errors.Join(errs...)
}

// do writes one command and reads its reply, within timeout or until ctx ends.
func (conn *redisConn) do(ctx context.Context, timeout time.Duration, args []string) (any, error) {
	deadline := time.Now().Add(timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if err := conn.SetDeadline(deadline); err != nil {
		return nil, err
	}
	// A context cancelled mid-command unblocks the read at once.
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	writeCommand(conn.w, args)
	if err := conn.w.Flush(); err != nil {
		return nil, err
	}
	reply, err := readReply(conn.r, 0)
	if err != nil && ctx.Err() != nil {
		return nil, ctx.Err()
	}
	return reply, err
}

// writeCommand writes args as a RESP array of bulk strings.
func writeCommand(w *bufio.Writer, args []string) {
	fmt.Fprintf(w, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(w, "$%d\r\n%s\r\n", len(a), a)
	}
}

// errProtocol wraps every malformed reply.
var errProtocol = errors.New("malformed RESP reply")

// readReply reads one RESP2 reply (see writeCommand's counterpart, do).
func readReply(r *bufio.Reader, depth int) (any, error) {
	line, err := readLine(r)
	if err != nil {
		return nil, err
	}
	if len(line) == 0 {
		return nil, fmt.Errorf("%w: empty line", errProtocol)
	}
	kind, rest := line[0], string(line[1:])
	switch kind {
	case '+':
		return rest, nil
	case '-':
		return nil, RedisError(rest)
	case ':':
		n, err := strconv.ParseInt(rest, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%w: integer %q", errProtocol, rest)
		}
		return n, nil
	case '$':
		n, err := readLength(rest, maxBulkLen)
		if err != nil || n < 0 {
			return nil, err
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(r, buf); err != nil {
			return nil, err
		}
		if buf[n] != '\r' || buf[n+1] != '\n' {
			return nil, fmt.Errorf("%w: bulk string of %d bytes not followed by CRLF", errProtocol, n)
		}
		return string(buf[:n]), nil
	case '*':
		n, err := readLength(rest, maxArrayLen)
		if err != nil || n < 0 {
			return nil, err
		}
		if depth >= maxReplyNest {
			return nil, fmt.Errorf("%w: arrays nested deeper than %d", errProtocol, maxReplyNest)
		}
		items := make([]any, 0, min(n, 1024))
		for range n {
			item, err := readReply(r, depth+1)
			var redisErr RedisError
			if errors.As(err, &redisErr) {
				// An error inside an array (EXEC's) is an element: read the rest,
				// or the next reply on this connection would be this one's tail.
				item, err = redisErr, nil
			}
			if err != nil {
				return nil, err
			}
			items = append(items, item)
		}
		return items, nil
	}
	return nil, fmt.Errorf("%w: unknown type %q", errProtocol, kind)
}

// readLength parses a bulk or array length: -1 (nil) or 0..limit.
func readLength(text string, limit int) (int, error) {
	n, err := strconv.Atoi(text)
	if err != nil || n < -1 || n > limit {
		return 0, fmt.Errorf("%w: length %q", errProtocol, text)
	}
	return n, nil
}

// readLine returns a line without its CRLF.
func readLine(r *bufio.Reader) ([]byte, error) {
	line, err := r.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		return nil, fmt.Errorf("%w: line longer than %d bytes", errProtocol, r.Size())
	}
	if err != nil {
		return nil, err
	}
	if len(line) < 2 || line[len(line)-2] != '\r' {
		return nil, fmt.Errorf("%w: line %q does not end in CRLF", errProtocol, line)
	}
	return line[:len(line)-2], nil
}
