//go:build tools

package main

import (
	_ "github.com/eclipse/paho.mqtt.golang"
	_ "github.com/google/go-cmp/cmp"
	_ "github.com/kelseyhightower/envconfig"
	_ "github.com/mochi-mqtt/server/v2"
	_ "github.com/mochi-mqtt/server/v2/hooks/auth"
	_ "github.com/mochi-mqtt/server/v2/hooks/storage/badger"
	_ "github.com/mochi-mqtt/server/v2/listeners"
	_ "github.com/plgd-dev/go-coap/v3/message"
	_ "github.com/plgd-dev/go-coap/v3/udp/coder"
	_ "go.uber.org/goleak"
	_ "go.yaml.in/yaml/v3"
	_ "golang.org/x/crypto/bcrypt"
	_ "golang.org/x/sync/errgroup"
)

func main() {}
