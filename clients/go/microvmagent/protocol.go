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

// maxNumber is the protocol's largest generation number, 2^53 - 1 (every runtime holds it exactly).
const maxNumber = 1<<53 - 1

// decimal reads `0` or 1 to most ASCII digits without a leading zero.
func decimal(word string, most int) (uint64, bool) {
	if len(word) == 0 || len(word) > most || (word[0] == '0' && len(word) > 1) {
		return 0, false
	}
	for i := 0; i < len(word); i++ {
		if word[i] < '0' || word[i] > '9' {
			return 0, false
		}
	}
	v, err := strconv.ParseUint(word, 10, 64)
	return v, err == nil
}

// lowerHex says whether s is lower-case hex digits only.
func lowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if !(s[i] >= '0' && s[i] <= '9' || s[i] >= 'a' && s[i] <= 'f') {
			return false
		}
	}
	return true
}

// parse reads `MVA1 generation <n> <64 hex> [<ms>]` or `MVA1 event <name> <n> [<ms>]`: the
// grammar of inproc/PROTOCOL.md, checked against testdata/lines.tsv.
func parse(line string) (message, bool) {
	w := strings.Split(line, " ")
	if (len(w) != 4 && len(w) != 5) || w[0] != "MVA1" {
		return message{}, false
	}
	m := message{budget: -1}
	if len(w) == 5 {
		ms, ok := decimal(w[4], 9)
		if !ok {
			return message{}, false
		}
		m.budget = int64(ms)
	}
	switch w[1] {
	case "generation":
		n, ok := decimal(w[2], 16)
		if !ok || n > maxNumber || len(w[3]) != 64 || !lowerHex(w[3]) {
			return message{}, false
		}
		seed, _ := hex.DecodeString(w[3])
		m.event, m.number, m.seed = "generation", n, seed
		return m, true
	case "event":
		n, ok := decimal(w[3], 16)
		if !ok || n > maxNumber || (w[2] != "suspend" && w[2] != "terminate") {
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
