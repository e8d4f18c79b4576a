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
	raw, err := c.read("generation")
	if err != nil {
		return Generation{}, err
	}
	return parseGeneration(raw)
}

// generationFormat is the generation file's format this package reads (inproc/PROTOCOL.md,
// "The state directory").
const generationFormat = 1

// parseGeneration reads a generation file. An error when it is not one this package can read:
// not a JSON object, another format (absent: 1, as agents before the field wrote), no
// generation number. Unknown fields are a later agent's and are ignored.
func parseGeneration(raw []byte) (Generation, error) {
	// One decoding: the outer "generation" (shallower) takes the number, so that its absence
	// can be told from 0; the embedded Generation gets the rest.
	var doc struct {
		Generation
		Format *int64   `json:"format"`
		Number *float64 `json:"generation"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		return Generation{}, fmt.Errorf("microvmagent: not a generation file: %w", err)
	}
	if doc.Format != nil && *doc.Format != generationFormat {
		return Generation{}, fmt.Errorf("microvmagent: generation file format %d (this package reads %d)", *doc.Format, generationFormat)
	}
	if doc.Number == nil || *doc.Number < 0 || *doc.Number != float64(uint64(*doc.Number)) {
		return Generation{}, errors.New("microvmagent: no generation number in the generation file")
	}
	g := doc.Generation
	g.Number = uint64(*doc.Number)
	return g, nil
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
