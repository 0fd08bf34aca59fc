package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/affinityproxy/affinity/balancer"
)

// The files of learn.redis are read into the options: a password without
// the newline a file ends with, PEM certificates and keys as they are.
func TestRedisFiles(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	read := func(path string) []byte {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	cert, key := filepath.Join("..", "testdata", "tls", "cert.pem"), filepath.Join("..", "testdata", "tls", "key.pem")
	config := func(redis string) string {
		return "listen: 127.0.0.1:8080\npools:\n  app:\n    balancer:\n      type: learn\n      learn:\n        cookie: SID\n        store: redis\n        redis: " +
			redis + "\n    backends: [{url: \"http://127.0.0.1:9001\"}]\n"
	}
	tests := []struct {
		name, redis string
		want        balancer.RedisOptions
	}{
		{
			"password file with a newline",
			`{addrs: [127.0.0.1:6379], username: app, password_file: "` + write("pw", "s3cret:\"\n") + `"}`,
			balancer.RedisOptions{Addrs: []string{"127.0.0.1:6379"}, Timeout: DefaultRedisTimeout, Username: "app", Password: `s3cret:"`},
		},
		{
			"password file with CRLF, none at the end",
			`{addrs: [127.0.0.1:6379], password_file: "` + write("crlf", "a b\r\n") + `", sentinel: null}`,
			balancer.RedisOptions{Addrs: []string{"127.0.0.1:6379"}, Timeout: DefaultRedisTimeout, Password: "a b"},
		},
		{
			"tls with a client certificate",
			`{addrs: [127.0.0.1:6379], tls: {ca: "` + cert + `", cert: "` + cert + `", key: "` + key + `"}}`,
			balancer.RedisOptions{Addrs: []string{"127.0.0.1:6379"}, Timeout: DefaultRedisTimeout,
				TLS: &balancer.RedisTLS{CA: read(cert), Cert: read(cert), Key: read(key)}},
		},
		{
			"tls with the system's roots",
			`{addrs: [127.0.0.1:6379], tls: {}}`,
			balancer.RedisOptions{Addrs: []string{"127.0.0.1:6379"}, Timeout: DefaultRedisTimeout, TLS: &balancer.RedisTLS{}},
		},
		{
			"sentinel password file",
			`{sentinel: {master: m, addrs: [127.0.0.1:26379], username: w, password_file: "` + write("spw", "watch\n") + `"}, password: p}`,
			balancer.RedisOptions{Timeout: DefaultRedisTimeout, Password: "p",
				Sentinel: &balancer.RedisSentinel{Master: "m", Addrs: []string{"127.0.0.1:26379"}, Username: "w", Password: "watch"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse("redis.yaml", []byte(config(tt.redis)))
			if err != nil {
				t.Fatal(err)
			}
			if got := c.Pools[0].Balancer.Options.Learn.Redis; !reflect.DeepEqual(got, tt.want) {
				t.Errorf("redis = %+v, want %+v", got, tt.want)
			}
		})
	}

	empty := write("empty", "\n")
	_, err := Parse("redis.yaml", []byte(config(`{addrs: [127.0.0.1:6379], password_file: "`+empty+`"}`)))
	var list ErrorList
	if !errors.As(err, &list) || len(list) != 1 || !strings.HasSuffix(list[0].Msg, empty+" holds no password") {
		t.Errorf("an empty password file: %v, want one error saying it holds no password", err)
	}
	big := write("big", strings.Repeat("x", maxSecretFile+1))
	_, err = Parse("redis.yaml", []byte(config(`{addrs: [127.0.0.1:6379], password_file: "`+big+`"}`)))
	if !errors.As(err, &list) || len(list) != 1 || !strings.Contains(list[0].Msg, "is larger than") {
		t.Errorf("a password file too big: %v, want one error saying so", err)
	}
}
