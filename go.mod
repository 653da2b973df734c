module example.com/gateway-e2e

go 1.25
