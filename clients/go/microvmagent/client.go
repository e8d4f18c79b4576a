// Package microvmagent runs an app's clone-safety code behind microvm-agent (AWS Lambda
// MicroVMs).
//
// Every VM of an image is a clone of one snapshot: what the app holds in memory (its own
// *rand.Rand, ids and keys it made) is the same in every clone. A [Client] runs the app's
// callbacks at the right moment, before the agent answers the platform's hook (the shape of
// SnapStart's register-after-restore), over the agent's Unix socket ($MICROVM_AGENT_INPROC,
// kind "app"; inproc/PROTOCOL.md in the agent's repository). Standard library only.
//
//	c := microvmagent.New(microvmagent.Options{})
//	src := c.NewChaCha8()
//	rng := rand.New(src)
//	c.OnNewGeneration(func(ctx context.Context, g microvmagent.Generation) error {
//		c.ReseedChaCha8(src)
//		return nil
//	})
//	if err := c.Start(ctx); err != nil { ... } // ErrNotBehindAgent outside a MicroVM
package microvmagent

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"
)

// Callback runs on an event. ctx ends at the agent's deadline for this event (when the agent
// says it: every agent that knows the "deadline" feature) or when Start's context ends. An error
// (or a panic) is reported to the agent.
type Callback func(ctx context.Context, g Generation) error

// Options says where the agent is; the zero value reads the environment the agent gives the
// app's processes.
type Options struct {
	// Socket is the agent's socket ("": $MICROVM_AGENT_INPROC).
	Socket string
	// StateDir is the agent's state directory ("": $MICROVM_AGENT_STATE_DIR).
	StateDir string
	// Logger says what goes wrong (nil: slog.Default()). No seed or secret is ever logged.
	Logger *slog.Logger
}

// ErrNotBehindAgent is what Start returns outside a MicroVM (no socket to reach): callbacks will
// not run. An app that runs both inside and outside a MicroVM ignores it.
var ErrNotBehindAgent = errors.New("microvmagent: not behind microvm-agent (no MICROVM_AGENT_INPROC)")

// Client is one process's connection to the agent and the callbacks it runs.
type Client struct {
	socket   string
	stateDir string
	log      *slog.Logger

	mu          sync.Mutex
	callbacks   map[string][]Callback
	connected   bool
	processSeed []byte
	// processNumber is the generation processSeed came with.
	processNumber uint64
}

// New makes a client; nothing happens until Start.
func New(o Options) *Client {
	if o.Socket == "" {
		o.Socket = os.Getenv("MICROVM_AGENT_INPROC")
	}
	if o.StateDir == "" {
		o.StateDir = os.Getenv("MICROVM_AGENT_STATE_DIR")
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return &Client{socket: o.Socket, stateDir: o.StateDir, log: o.Logger, callbacks: map[string][]Callback{}}
}

// OnNewGeneration runs cb on every new generation (each clone's /run, every /resume, a /validate,
// a restore the agent detected), before the hook answers. Callbacks run in registration order.
func (c *Client) OnNewGeneration(cb Callback) { c.register("generation", cb) }

// OnSuspend runs cb on /suspend, before the VM is frozen.
func (c *Client) OnSuspend(cb Callback) { c.register("suspend", cb) }

// OnTerminate runs cb on /terminate, before the agent stops the app.
func (c *Client) OnTerminate(cb Callback) { c.register("terminate", cb) }

func (c *Client) register(event string, cb Callback) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.callbacks[event] = append(c.callbacks[event], cb)
}

// Active says whether this client is connected to an agent.
func (c *Client) Active() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.connected
}

// Start connects to the agent and serves its events on a goroutine of its own until ctx ends
// or the agent goes. It returns once registered (the agent counts this process from then on), or
// ErrNotBehindAgent, or why the agent could not be reached.
func (c *Client) Start(ctx context.Context) error {
	if c.socket == "" {
		c.log.Info("microvmagent: not behind microvm-agent (no MICROVM_AGENT_INPROC): callbacks will not run")
		return ErrNotBehindAgent
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.socket)
	if err != nil {
		c.log.Warn("microvmagent: cannot reach microvm-agent", "socket", c.socket, "err", err)
		return fmt.Errorf("microvmagent: cannot reach microvm-agent at %s: %w", c.socket, err)
	}
	// Events it wants beside generations, then the features it knows: "deadline" (each line
	// carries the milliseconds left; an agent that does not know it ignores the word).
	if _, err := fmt.Fprintf(conn, "MVA1 hello app %d suspend,terminate deadline\n", os.Getpid()); err != nil {
		conn.Close()
		return fmt.Errorf("microvmagent: hello: %w", err)
	}
	c.mu.Lock()
	c.connected = true
	c.mu.Unlock()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	go func() {
		defer stop()
		defer conn.Close()
		defer func() {
			c.mu.Lock()
			c.connected = false
			c.mu.Unlock()
		}()
		c.serve(ctx, conn)
	}()
	return nil
}

func (c *Client) serve(ctx context.Context, conn net.Conn) {
	r := bufio.NewReaderSize(conn, maxLine)
	for {
		line, err := r.ReadSlice('\n')
		if err != nil {
			return
		}
		m, ok := parse(string(line[:len(line)-1]))
		if !ok {
			continue
		}
		if _, err := conn.Write([]byte(c.handle(ctx, m))); err != nil {
			return
		}
	}
}

// handle runs the callbacks of one message and returns the answer line.
func (c *Client) handle(ctx context.Context, m message) string {
	c.mu.Lock()
	if m.seed != nil {
		c.processSeed, c.processNumber = m.seed, m.number
	}
	list := append([]Callback(nil), c.callbacks[m.event]...)
	c.mu.Unlock()
	g, err := c.Current()
	if err != nil {
		g = Generation{Number: m.number}
	}
	g.ProcessSeed = m.seed
	if m.budget >= 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(m.budget)*time.Millisecond)
		defer cancel()
	}
	for _, cb := range list {
		if err := run(ctx, cb, g); err != nil {
			c.log.Warn("microvmagent: a callback failed", "event", m.event, "generation", m.number, "err", err)
			return failLine(m.number, err.Error())
		}
	}
	return fmt.Sprintf("MVA1 ack %d callbacks=%d\n", m.number, len(list))
}

// run calls cb, turning a panic into an error.
func run(ctx context.Context, cb Callback, g Generation) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic: %v", p)
		}
	}()
	return cb(ctx, g)
}
