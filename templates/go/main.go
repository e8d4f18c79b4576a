// A clone-safe Go app for microvm-agent (standard library only; go.mod says go 1.24, built with
// a current Go).
//
// The trap: the generators' state is made during the image build and every clone draws the same
// numbers. The top-level functions of math/rand and math/rand/v2 draw from the runtime's
// generator, seeded once at start-up: cloned, and with `go 1.24` or later in go.mod rand.Seed is
// a no-op, so nothing reseeds them (under `go 1.19`..`1.23`, Seed still works).
// The fix: keep your own *rand.Rand and replace it when the agent announces a new generation,
// seeded from the kernel *and* the agent's per-generation seed ("seed" in the event): under the
// platform's default capabilities and without VMGenID, crypto/rand can return the same bytes in
// every clone; the seed cannot.
//
// GET /probe answers the next value of each common generator and what this template claims for
// it ("safe", "kernel": safe only where the kernel was reseeded, "none"); tests/runtime_vm.rs
// measures them in real clones.
package main

import (
	crand "crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	mrand "math/rand"
	"math/rand/v2"
	"net/http"
	"os"
	"runtime"
	"sync"
)

var (
	mu         sync.Mutex
	seed       [32]byte
	draws      int64
	rng        *rand.Rand
	generation int64
)

// reseed replaces the generator with one seeded from sha256(kernel bytes || agent seed).
func reseed(agentSeedHex string) {
	var b [32]byte
	_, _ = crand.Read(b[:])
	h := sha256.New()
	h.Write(b[:])
	if s, err := hex.DecodeString(agentSeedHex); err == nil {
		h.Write(s)
	}
	copy(seed[:], h.Sum(nil))
	rng = rand.New(rand.NewChaCha8(seed))
	draws = 0
}

// fingerprint identifies the generator's state: its seed and how far it has been drawn.
func fingerprint() string {
	return fmt.Sprintf("%016x-%d", binary.LittleEndian.Uint64(seed[:8]), draws)
}

var claims = map[string]string{
	"*rand.Rand kept by the app (replaced by the handler)": "safe",
	"math/rand top-level":    "none",
	"math/rand/v2 top-level": "none",
	"crypto/rand":            "kernel",
}

func probe() map[string]any {
	mu.Lock()
	defer mu.Unlock()
	draws++
	var b [16]byte
	_, _ = crand.Read(b[:])
	return map[string]any{
		"runtime":    "Go " + runtime.Version(),
		"generation": generation,
		"claims":     claims,
		"values": map[string]string{
			"*rand.Rand kept by the app (replaced by the handler)": fmt.Sprint(rng.Uint64()),
			"math/rand top-level":    fmt.Sprint(mrand.Int63()),
			"math/rand/v2 top-level": fmt.Sprint(rand.Uint64()),
			"crypto/rand":            hex.EncodeToString(b[:]),
		},
	}
}

func main() {
	reseed("")
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	http.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, `{"ok":true}`) })
	http.HandleFunc("/probe", func(w http.ResponseWriter, r *http.Request) { _ = json.NewEncoder(w).Encode(probe()) })
	http.HandleFunc("/whoami", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		draws++
		_ = json.NewEncoder(w).Encode(map[string]any{"generation": generation, "random": rng.Int64(), "fingerprint": fingerprint()})
	})
	http.HandleFunc("/__lifecycle", func(w http.ResponseWriter, r *http.Request) {
		var event struct {
			Event      string `json:"event"`
			Generation int64  `json:"generation"`
			Seed       string `json:"seed"`
		}
		_ = json.NewDecoder(r.Body).Decode(&event)
		mu.Lock()
		before := fingerprint()
		if event.Event == "run" || event.Event == "resume" || event.Event == "validate" {
			reseed(event.Seed)
			generation = event.Generation
		}
		line, _ := json.Marshal(map[string]any{"event": event.Event, "generation": event.Generation, "before": before, "after": fingerprint()})
		mu.Unlock()
		fmt.Println(string(line))
		fmt.Fprint(w, `{"acknowledged":true}`)
	})
	if err := http.ListenAndServe("0.0.0.0:"+port, nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
