module example.com/microvm-app

go 1.24

require github.com/microvm-agent/microvm-agent/clients/go v0.0.0

// The client library: copy clients/go of the agent's repository next to this file
// (`cp -r ../../clients/go microvm-agent-go`), as the agent binary.
replace github.com/microvm-agent/microvm-agent/clients/go => ./microvm-agent-go
