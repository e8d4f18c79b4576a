// Package microvmagent runs an app's clone-safety code behind microvm-agent (AWS Lambda
// MicroVMs).
//
// Every VM of an image is a clone of one snapshot: what the app holds in memory (its own
// *rand.Rand, ids and keys it made) is the same in every clone. This package runs the app's
// callbacks at the right moment, before the agent answers the platform's hook (the shape of
// SnapStart's register-after-restore), over the agent's Unix socket ($MICROVM_AGENT_INPROC,
// kind "app"; inproc/PROTOCOL.md in the agent's repository). Standard library only.
package microvmagent

import (
	"bufio"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"

	mrand "math/rand/v2"
)

const maxLine = 256

// Generation is one generation as the agent published it (<state_dir>/generation).
type Generation struct {
	Number     uint64 `json:"generation"`
	ID         string `json:"id"`
	Reason     string `json:"reason"`
	MicrovmID  string `json:"microvm_id"`
	KernelCRNG string `json:"kernel_crng"`
	// ProcessSeed is the 32 bytes the agent sent this process for this generation (nil for
	// suspend and terminate).
	ProcessSeed []byte `json:"-"`
}

// Callback runs on an event; an error (or a panic) is reported to the agent.
type Callback func(Generation) error

var (
	mu          sync.Mutex
	callbacks   = map[string][]Callback{}
	started     bool
	connected   bool
	processSeed []byte
)

// OnNewGeneration runs cb on every new generation (each clone's /run, every /resume, a /validate,
// a restore the agent detected), before the hook answers.
func OnNewGeneration(cb Callback) { register("generation", cb) }

// OnSuspend runs cb on /suspend, before the VM is frozen.
func OnSuspend(cb Callback) { register("suspend", cb) }

// OnTerminate runs cb on /terminate, before the agent stops the app.
func OnTerminate(cb Callback) { register("terminate", cb) }

// Active says whether this process is connected to an agent.
func Active() bool {
	mu.Lock()
	defer mu.Unlock()
	return connected
}

func register(event string, cb Callback) {
	mu.Lock()
	defer mu.Unlock()
	callbacks[event] = append(callbacks[event], cb)
	if started {
		return
	}
	started = true
	path := os.Getenv("MICROVM_AGENT_INPROC")
	if path == "" {
		log.Print("microvmagent: not behind microvm-agent (no MICROVM_AGENT_INPROC): callbacks will not run")
		return
	}
	go serve(path)
}

func read(name string) ([]byte, error) {
	dir := os.Getenv("MICROVM_AGENT_STATE_DIR")
	if dir == "" {
		return nil, errors.New("not behind microvm-agent (no MICROVM_AGENT_STATE_DIR)")
	}
	return os.ReadFile(filepath.Join(dir, name))
}

// Current is the current generation (an error before the first one or outside a MicroVM).
func Current() (Generation, error) {
	var g Generation
	raw, err := read("generation")
	if err != nil {
		return g, err
	}
	err = json.Unmarshal(raw, &g)
	return g, err
}

// GenerationID is the current generation's id ("" when there is none): the per-VM identity.
func GenerationID() string {
	g, _ := Current()
	return g.ID
}

// KernelCRNG is "reseeded", "platform" or "not-reseeded" ("" when there is no generation).
func KernelCRNG() string {
	g, _ := Current()
	return g.KernelCRNG
}

// Seed is the app's seed for this generation (32 bytes).
func Seed() ([]byte, error) { return read("seed") }

// Secret is the value of the agent's [[secret]] name for this generation.
func Secret(name string) ([]byte, error) {
	if name == "" || strings.Contains(name, "/") || name == "." || name == ".." {
		return nil, fmt.Errorf("not a secret's name: %q", name)
	}
	return read(filepath.Join("secrets", name))
}

// seedMaterial is 32 bytes from crypto/rand mixed with the agent's seed for this process (or
// the app's seed): different in every clone even where the kernel's getrandom is not.
func seedMaterial() [32]byte {
	mu.Lock()
	agent := processSeed
	mu.Unlock()
	if agent == nil {
		agent, _ = Seed()
	}
	var fresh [32]byte
	_, _ = rand.Read(fresh[:])
	h := sha256.New()
	h.Write(fresh[:])
	h.Write(agent)
	var out [32]byte
	copy(out[:], h.Sum(nil))
	return out
}

// NewChaCha8 is a math/rand/v2 source seeded with sha256(crypto/rand ‖ the agent's seed).
func NewChaCha8() *mrand.ChaCha8 { return mrand.NewChaCha8(seedMaterial()) }

// ReseedChaCha8 reseeds src in place: a *rand.Rand built on it draws fresh values from then on.
func ReseedChaCha8(src *mrand.ChaCha8) { src.Seed(seedMaterial()) }

// NewRand is rand.New(NewChaCha8()): a generator for the app to keep and replace, or reseed
// through its source.
func NewRand() *mrand.Rand { return mrand.New(NewChaCha8()) }

func serve(path string) {
	conn, err := net.Dial("unix", path)
	if err != nil {
		log.Printf("microvmagent: cannot reach microvm-agent at %s: %v", path, err)
		return
	}
	defer conn.Close()
	mu.Lock()
	connected = true
	mu.Unlock()
	defer func() {
		mu.Lock()
		connected = false
		mu.Unlock()
	}()
	if _, err := fmt.Fprintf(conn, "MVA1 hello app %d suspend,terminate\n", os.Getpid()); err != nil {
		return
	}
	r := bufio.NewReaderSize(conn, maxLine)
	for {
		line, err := r.ReadSlice('\n')
		if err != nil {
			return
		}
		if answer := handle(strings.TrimSuffix(string(line), "\n")); answer != "" {
			if _, err := conn.Write([]byte(answer)); err != nil {
				return
			}
		}
	}
}

// message is one line from the agent.
type message struct {
	event  string
	number uint64
	seed   []byte
}

func parse(line string) (message, bool) {
	w := strings.Split(line, " ")
	if len(w) != 4 || w[0] != "MVA1" {
		return message{}, false
	}
	switch w[1] {
	case "generation":
		n, err := strconv.ParseUint(w[2], 10, 64)
		seed, herr := hex.DecodeString(w[3])
		if err != nil || herr != nil || len(seed) != 32 {
			return message{}, false
		}
		return message{"generation", n, seed}, true
	case "event":
		n, err := strconv.ParseUint(w[3], 10, 64)
		if err != nil || (w[2] != "suspend" && w[2] != "terminate") {
			return message{}, false
		}
		return message{w[2], n, nil}, true
	}
	return message{}, false
}

func handle(line string) string {
	m, ok := parse(line)
	if !ok {
		return ""
	}
	mu.Lock()
	if m.seed != nil {
		processSeed = m.seed
	}
	list := append([]Callback(nil), callbacks[m.event]...)
	mu.Unlock()
	g, err := Current()
	if err != nil {
		g = Generation{Number: m.number}
	}
	g.ProcessSeed = m.seed
	for _, cb := range list {
		if err := run(cb, g); err != nil {
			log.Printf("microvmagent: a %s callback failed: %v", m.event, err)
			return failLine(m.number, err.Error())
		}
	}
	return fmt.Sprintf("MVA1 ack %d callbacks=%d\n", m.number, len(list))
}

// run calls cb, turning a panic into an error.
func run(cb Callback, g Generation) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic: %v", p)
		}
	}()
	return cb(g)
}

// failLine is one protocol line of at most 256 bytes, cut once, by bytes, at a character
// boundary (valid UTF-8: the agent reads nothing else).
func failLine(number uint64, reason string) string {
	head := fmt.Sprintf("MVA1 fail %d ", number)
	room := maxLine - 1 - len(head)
	if len(reason) > 4*room {
		reason = reason[:4*room] // more than can fit: never scan a huge message
	}
	body := strings.ToValidUTF8(strings.NewReplacer("\n", " ", "\r", " ").Replace(reason), "?")
	if len(body) > room {
		cut := room
		for cut > 0 && !utf8.RuneStart(body[cut]) {
			cut--
		}
		body = body[:cut]
	}
	return head + body + "\n"
}
