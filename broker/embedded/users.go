package embedded

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"

	"go.yaml.in/yaml/v3"
	"golang.org/x/crypto/bcrypt"
)

// Users is a parsed users file: the accounts that may connect and the
// topics each may read (subscribe to, receive) and write (publish to).
// It is immutable and safe for concurrent use.
//
// The file is YAML:
//
//	users:
//	  homeassistant:
//	    password: "$2a$10$..."       # bcrypt hash (HashPassword, htpasswd -B)
//	    read:  ["spark/#", "homeassistant/#"]
//	    write: ["spark/+/fn/#", "spark/+/var/+/get", "spark/+/signal", "homeassistant/status"]
//
// Filters use MQTT wildcards. A subscription is allowed when one read
// filter covers its whole filter. Whatever the file says, no client may
// write Config.ProtectedTopics (device state is the bridge's). Unknown keys
// are errors, and every error names its line.
type Users struct {
	byName map[string]*user
}

type user struct {
	name  string
	hash  []byte
	read  []string
	write []string
}

// Names returns the account names, sorted.
func (u *Users) Names() []string {
	names := make([]string, 0, len(u.byName))
	for n := range u.byName {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// LoadUsers reads and parses the users file at path. Errors wrap
// ErrUsersFile and name the file and line.
func LoadUsers(path string) (*Users, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUsersFile, err)
	}
	u, err := ParseUsers(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return u, nil
}

// ParseUsers parses a users file. Errors wrap ErrUsersFile and name the line.
func ParseUsers(data []byte) (*Users, error) {
	var doc struct {
		Users yaml.Node `yaml:"users"`
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%w: empty, want a users: mapping", ErrUsersFile)
		}
		return nil, fmt.Errorf("%w: %w", ErrUsersFile, err)
	}
	n := &doc.Users
	if n.Kind != yaml.MappingNode || len(n.Content) == 0 {
		line := n.Line
		if line == 0 {
			line = 1
		}
		return nil, usersErr(line, "users: want a mapping of user names to accounts")
	}
	u := &Users{byName: map[string]*user{}}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode || k.Value == "" {
			return nil, usersErr(k.Line, "user name must be a non-empty string")
		}
		if _, dup := u.byName[k.Value]; dup {
			return nil, usersErr(k.Line, "user %q listed twice", k.Value)
		}
		acct, err := parseUser(k.Value, v)
		if err != nil {
			return nil, err
		}
		u.byName[k.Value] = acct
	}
	return u, nil
}

func parseUser(name string, n *yaml.Node) (*user, error) {
	if n.Kind != yaml.MappingNode {
		return nil, usersErr(n.Line, "user %q: want a mapping with password, read, write", name)
	}
	u := &user{name: name}
	seenPassword := false
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		switch k.Value {
		case "password":
			if v.Kind != yaml.ScalarNode || v.Value == "" {
				return nil, usersErr(v.Line, "user %q: password must be a bcrypt hash", name)
			}
			if _, err := bcrypt.Cost([]byte(v.Value)); err != nil {
				return nil, usersErr(v.Line, "user %q: password is not a bcrypt hash (store the hash, not the password): %v", name, err)
			}
			u.hash = []byte(v.Value)
			seenPassword = true
		case "read", "write":
			var filters []string
			if err := v.Decode(&filters); err != nil {
				return nil, usersErr(v.Line, "user %q: %s: want a list of topic filters", name, k.Value)
			}
			for j, f := range filters {
				if !validFilter(f) {
					return nil, usersErr(v.Content[j].Line, "user %q: %s: invalid topic filter %q", name, k.Value, f)
				}
			}
			if k.Value == "read" {
				u.read = filters
			} else {
				u.write = filters
			}
		default:
			return nil, usersErr(k.Line, "user %q: unknown key %q (want password, read, write)", name, k.Value)
		}
	}
	if !seenPassword {
		return nil, usersErr(n.Line, "user %q: no password", name)
	}
	return u, nil
}

func usersErr(line int, format string, args ...any) error {
	return fmt.Errorf("%w: line %d: %s", ErrUsersFile, line, fmt.Sprintf(format, args...))
}

// HashPassword returns the bcrypt hash of password for a users file.
func HashPassword(password string) (string, error) {
	h, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.DefaultCost)
	if err != nil {
		return "", fmt.Errorf("embedded: hash password: %w", err)
	}
	return string(h), nil
}
