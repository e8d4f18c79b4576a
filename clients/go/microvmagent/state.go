package microvmagent

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Generation is one generation as the agent published it (<state_dir>/generation).
type Generation struct {
	Number     uint64 `json:"generation"`
	ID         string `json:"id"`
	Reason     string `json:"reason"`
	MicrovmID  string `json:"microvm_id"`
	KernelCRNG string `json:"kernel_crng"`
	// ProcessSeed is the 32 bytes the agent sent this process for this generation (nil for
	// suspend and terminate, and from Current).
	ProcessSeed []byte `json:"-"`
}

func (c *Client) read(name string) ([]byte, error) {
	if c.stateDir == "" {
		return nil, errors.New("microvmagent: not behind microvm-agent (no MICROVM_AGENT_STATE_DIR)")
	}
	return os.ReadFile(filepath.Join(c.stateDir, name))
}

// Current is the current generation (an error before the first one or outside a MicroVM).
func (c *Client) Current() (Generation, error) {
	var g Generation
	raw, err := c.read("generation")
	if err != nil {
		return g, err
	}
	err = json.Unmarshal(raw, &g)
	return g, err
}

// GenerationID is the current generation's id ("" when there is none): the per-VM identity.
func (c *Client) GenerationID() string {
	g, _ := c.Current()
	return g.ID
}

// KernelCRNG is "reseeded", "platform" or "not-reseeded" ("" when there is no generation).
func (c *Client) KernelCRNG() string {
	g, _ := c.Current()
	return g.KernelCRNG
}

// Seed is the app's seed for this generation (32 bytes).
func (c *Client) Seed() ([]byte, error) { return c.read("seed") }

// Secret is the value of the agent's [[secret]] name for this generation.
func (c *Client) Secret(name string) ([]byte, error) {
	if name == "" || strings.Contains(name, "/") || name == "." || name == ".." {
		return nil, fmt.Errorf("microvmagent: not a secret's name: %q", name)
	}
	return c.read(filepath.Join("secrets", name))
}
