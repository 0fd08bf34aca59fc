package config

import (
	"github.com/affinityproxy/affinity/balancer"
)

// learnSection decodes a balancer's learn section into b's options, and
// reports a learn balancer without one: the application's cookie has no
// default. typeOK tells that b.Type was read without error.
func (d *decoder) learnSection(s *section, b *Balancer, typeOK bool) {
	if l := d.sub(s, "learn", "cookie", "max_entries", "redis", "store", "ttl"); l != nil {
		d.learn(l, &b.Options.Learn)
	} else if n := s.vals["learn"]; typeOK && b.Type == optionTypes["learn"] && (n == nil || isNull(n)) {
		at := s.at
		if k := s.keys["type"]; k != nil {
			at = k
		}
		d.errorf(at, "%s: %s needs learn.cookie (the application's session cookie, e.g. JSESSIONID)", s.path, b.Type)
	}
}

// learn decodes the learn policy's options into o, which holds defaults.
func (d *decoder) learn(s *section, o *balancer.LearnOptions) {
	d.require(s, "cookie")
	if v, n := d.str(s, "cookie"); n != nil {
		if !isToken(v) {
			d.errorf(n, "%s.cookie: %q is not a valid cookie name (letters, digits and !#$%%&'*+-.^_`|~)", s.path, v)
		}
		o.Cookie = v
		d.mark(s.path+".cookie", n)
	}
	if v, n := d.integer(s, "max_entries", 1, MaxLearnEntries); n != nil {
		o.MaxEntries = int(v)
	}
	if v, n := d.duration(s, "ttl", false); n != nil {
		o.TTL = v
	}
	storeOK := true
	store, sn := d.oneOf(s, "store", balancer.LearnStoreMemory, balancer.LearnStoreRedis)
	if sn != nil {
		o.Store = store
	} else if n := s.vals["store"]; n != nil && !isNull(n) {
		storeOK = false // reported by oneOf
	}
	r := d.sub(s, "redis", "addrs", "db", "password", "password_file", "sentinel", "timeout", "tls", "username")
	if r != nil {
		d.redis(r, &o.Redis)
	}
	switch {
	case !storeOK:
	case o.Store == balancer.LearnStoreRedis && r == nil:
		d.errorf(sn, "%s.store: redis needs a redis section: redis.addrs (host:port of the server, or of cluster nodes) or redis.sentinel", s.path)
	case o.Store != balancer.LearnStoreRedis && s.vals["redis"] != nil && !isNull(s.vals["redis"]):
		d.errorf(s.keys["redis"], "%s: redis applies to store: redis only (store is %s)", s.path, o.Store)
	}
}
