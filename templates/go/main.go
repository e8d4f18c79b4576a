// A clone-safe Go app for microvm-agent (standard library only).
//
// The trap: the generators' state is made during the image build and every clone draws the same
// numbers. math/rand's globals: with `go 1.19` in go.mod (this template) they start from seed 1
// unless rand.Seed is called, and rand.Seed works; from a `go 1.24` go.mod on, Seed is a no-op.
// math/rand/v2's top-level functions draw from runtime state seeded once at start: cloned, and
// they cannot be reseeded.
// The fix: keep your own *rand.Rand and replace it when the agent announces a new generation,
// seeded from the kernel *and* the agent's per-generation seed ("seed" in the event): under the
// platform's default capabilities and without VMGenID, crypto/rand can return the same bytes in
// every clone; the seed cannot.
package main

import (
	crand "crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/rand"
	"net/http"
	"os"
	"sync"
)

var (
	mu         sync.Mutex
	seed       int64
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
	seed = int64(binary.LittleEndian.Uint64(h.Sum(nil)[:8]))
	rng = rand.New(rand.NewSource(seed))
	draws = 0
}

// fingerprint identifies the generator's state: its seed and how far it has been drawn.
func fingerprint() string { return fmt.Sprintf("%016x-%d", uint64(seed), draws) }

func main() {
	reseed("")
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	http.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, `{"ok":true}`) })
	http.HandleFunc("/whoami", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		draws++
		_ = json.NewEncoder(w).Encode(map[string]any{"generation": generation, "random": rng.Int63(), "fingerprint": fingerprint()})
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
