package microvmagent

import (
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// maxLine is the protocol's longest line, its end included.
const maxLine = 256

// message is one line from the agent.
type message struct {
	event  string // "generation", "suspend" or "terminate"
	number uint64
	seed   []byte // generation only: the 32 bytes for this process
	budget int64  // milliseconds left until the agent's deadline; -1 when the line has none
}

// parse reads `MVA1 generation <n> <64 hex> [<ms>]` or `MVA1 event <name> <n> [<ms>]`.
func parse(line string) (message, bool) {
	w := strings.Split(line, " ")
	if (len(w) != 4 && len(w) != 5) || w[0] != "MVA1" {
		return message{}, false
	}
	m := message{budget: -1}
	if len(w) == 5 {
		ms, err := strconv.ParseUint(w[4], 10, 32)
		if err != nil {
			return message{}, false
		}
		m.budget = int64(ms)
	}
	switch w[1] {
	case "generation":
		n, err := strconv.ParseUint(w[2], 10, 64)
		seed, herr := hex.DecodeString(w[3])
		if err != nil || herr != nil || len(seed) != 32 {
			return message{}, false
		}
		m.event, m.number, m.seed = "generation", n, seed
		return m, true
	case "event":
		n, err := strconv.ParseUint(w[3], 10, 64)
		if err != nil || (w[2] != "suspend" && w[2] != "terminate") {
			return message{}, false
		}
		m.event, m.number = w[2], n
		return m, true
	}
	return message{}, false
}

// failLine is one protocol line of at most maxLine bytes, cut once, by bytes, at a character
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
