// A clone-safe Go app for microvm-agent, on its client library (package microvmagent,
// clients/go/microvmagent; standard library only; go.mod says go 1.24, built with a current Go).
//
// The trap: the generators' state is made during the image build and every clone draws the same
// numbers. The top-level functions of math/rand and math/rand/v2 draw from the runtime's
// generator, seeded once at start-up: cloned, and with `go 1.24` or later in go.mod rand.Seed is
// a no-op, so nothing reseeds them (under `go 1.19`..`1.23`, Seed still works).
// The fix: keep your own *rand.Rand over a ChaCha8 source and reseed the source in a callback
// the library runs in every clone before the agent answers /run (and on every /resume), from the
// kernel *and* the agent's seed (Client.ReseedChaCha8): under the platform's default
// capabilities and without VMGenID, crypto/rand can return the same bytes in every clone; the
// seed cannot.
//
// GET /probe answers the next values of each common generator and what this template claims
// for it ("safe", "kernel": safe only where the kernel was reseeded, "none");
// tests/vm/runtime_vm.rs measures them in real clones.
package main

import (
	"context"
	crand "crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	mrand "math/rand"
	"math/rand/v2"
	"net/http"
	"os"
	"runtime"
	"sync"

	"github.com/microvm-agent/microvm-agent/clients/go/microvmagent"
)

var (
	agent      = microvmagent.New(microvmagent.Options{}) // where the agent is: from the environment
	mu         sync.Mutex
	src        = agent.NewChaCha8() // crypto/rand ‖ the agent's seed
	rng        = rand.New(src)      // kept by the app; its source reseeded in place
	generation uint64
)

// fingerprint identifies the generator's state (its serialised ChaCha8 state; nothing drawn).
func fingerprint() string {
	state, _ := src.MarshalBinary()
	sum := sha256.Sum256(state)
	return hex.EncodeToString(sum[:8])
}

var claims = map[string]string{
	"*rand.Rand kept by the app (replaced by the handler)": "safe",
	"math/rand top-level":    "none",
	"math/rand/v2 top-level": "none",
	"crypto/rand":            "kernel",
}

// draws is a generator's next eight values: a clone whose first value is among another clone's
// next ones read the same stream at another position (cloned, not reseeded), which the test
// checks for.
func draws(next func() string) []string {
	out := make([]string, 8)
	for i := range out {
		out[i] = next()
	}
	return out
}

func probe() map[string]any {
	mu.Lock()
	defer mu.Unlock()
	var b [16]byte
	_, _ = crand.Read(b[:])
	return map[string]any{
		"runtime":    "Go " + runtime.Version(),
		"generation": generation,
		"claims":     claims,
		"values": map[string]any{
			"*rand.Rand kept by the app (replaced by the handler)": draws(func() string { return fmt.Sprint(rng.Uint64()) }),
			"math/rand top-level":    draws(func() string { return fmt.Sprint(mrand.Int63()) }),
			"math/rand/v2 top-level": draws(func() string { return fmt.Sprint(rand.Uint64()) }),
			"crypto/rand":            hex.EncodeToString(b[:]),
		},
	}
}

func main() {
	// Every clone's /run, every /resume: runs before the agent answers the hook.
	// (ctx ends at the agent's deadline for the hook.)
	agent.OnNewGeneration(func(ctx context.Context, g microvmagent.Generation) error {
		mu.Lock()
		before := fingerprint()
		agent.ReseedChaCha8(src)
		generation = g.Number
		line, _ := json.Marshal(map[string]any{"event": g.Reason, "generation": g.Number, "before": before, "after": fingerprint()})
		mu.Unlock()
		fmt.Println(string(line))
		return nil
	})
	// Before the VM is frozen (OnTerminate: before the app is stopped).
	agent.OnSuspend(func(_ context.Context, g microvmagent.Generation) error {
		fmt.Printf("{\"event\":\"suspend\",\"generation\":%d}\n", g.Number)
		return nil
	})
	// Registered from here on; outside a MicroVM it says so (ErrNotBehindAgent) and the app runs on.
	_ = agent.Start(context.Background())
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	http.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, `{"ok":true}`) })
	http.HandleFunc("/probe", func(w http.ResponseWriter, r *http.Request) { _ = json.NewEncoder(w).Encode(probe()) })
	http.HandleFunc("/whoami", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		_ = json.NewEncoder(w).Encode(map[string]any{"generation": generation, "random": rng.Int64(), "fingerprint": fingerprint()})
	})
	if err := http.ListenAndServe("0.0.0.0:"+port, nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
