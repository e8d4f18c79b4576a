package microvmagent

import (
	"crypto/rand"
	"crypto/sha256"
	mrand "math/rand/v2"
)

// seedMaterial is 32 bytes from crypto/rand mixed with the agent's seed for this process (or
// the app's seed): different in every clone even where the kernel's getrandom is not.
func (c *Client) seedMaterial() [32]byte {
	c.mu.Lock()
	agent := c.processSeed
	c.mu.Unlock()
	if agent == nil {
		agent, _ = c.Seed()
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
func (c *Client) NewChaCha8() *mrand.ChaCha8 { return mrand.NewChaCha8(c.seedMaterial()) }

// ReseedChaCha8 reseeds src in place: a *rand.Rand built on it draws fresh values from then on.
func (c *Client) ReseedChaCha8(src *mrand.ChaCha8) { src.Seed(c.seedMaterial()) }

// NewRand is rand.New(c.NewChaCha8()): a generator for the app to keep and replace, or reseed
// through its source.
func (c *Client) NewRand() *mrand.Rand { return mrand.New(c.NewChaCha8()) }
