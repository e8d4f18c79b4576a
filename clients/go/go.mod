module github.com/microvm-agent/microvm-agent/clients/go

go 1.22
