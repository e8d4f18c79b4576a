package microvmagent

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	mrand "math/rand/v2"
	"os"
)

// mix is the protocol's one mixing rule (inproc/PROTOCOL.md, "Mixing"): SHA-256 of the seed
// (32 bytes), the pid (u32) and the generation (u64), little-endian, then the fresh bytes.
func mix(seed []byte, pid uint32, n uint64, fresh []byte) [32]byte {
	h := sha256.New()
	var head [44]byte
	copy(head[:32], seed)
	binary.LittleEndian.PutUint32(head[32:36], pid)
	binary.LittleEndian.PutUint64(head[36:44], n)
	h.Write(head[:])
	h.Write(fresh)
	var out [32]byte
	copy(out[:], h.Sum(nil))
	return out
}

// seedMaterial is the mix of the agent's seed for this process (or the app's seed) with 32
// bytes from crypto/rand: different in every clone even where the kernel's getrandom is not.
func (c *Client) seedMaterial() [32]byte {
	c.mu.Lock()
	agent, n := c.processSeed, c.processNumber
	c.mu.Unlock()
	if agent == nil {
		agent, _ = c.Seed()
		g, _ := c.Current()
		n = g.Number
	}
	var fresh [32]byte
	_, _ = rand.Read(fresh[:])
	return mix(agent, uint32(os.Getpid()), n, fresh[:])
}

// NewChaCha8 is a math/rand/v2 source seeded with the mix of crypto/rand and the agent's seed.
func (c *Client) NewChaCha8() *mrand.ChaCha8 { return mrand.NewChaCha8(c.seedMaterial()) }

// ReseedChaCha8 reseeds src in place: a *rand.Rand built on it draws fresh values from then on.
func (c *Client) ReseedChaCha8(src *mrand.ChaCha8) { src.Seed(c.seedMaterial()) }

// NewRand is rand.New(c.NewChaCha8()): a generator for the app to keep and replace, or reseed
// through its source.
func (c *Client) NewRand() *mrand.Rand { return mrand.New(c.NewChaCha8()) }
