module example.com/microvm-app

go 1.24
