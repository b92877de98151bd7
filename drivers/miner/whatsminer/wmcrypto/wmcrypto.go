// Package wmcrypto holds the cryptography of MicroBT's Whatsminer API: the
// MD5-crypt key and sign of API v2's token, its AES-256-ECB envelope, and the
// SHA-256 token of API v3's write commands. Both the driver and the simulator
// use it, so it is pinned by known-answer tests (openssl passwd -1, the
// published v3 examples) rather than by agreeing with itself.
package wmcrypto

import (
	"bytes"
	"crypto/aes"
	"crypto/md5"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"strconv"
)

// cryptAlphabet is the 64-character alphabet of crypt(3) hashes.
const cryptAlphabet = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

// MD5Crypt is crypt(3)'s "$1$" scheme (Poul-Henning Kamp's MD5 crypt), as
// `openssl passwd -1 -salt SALT PASSWORD` prints it: "$1$salt$hash".
// The salt is cut to its first 8 characters, as the scheme does.
func MD5Crypt(password, salt string) string {
	if len(salt) > 8 {
		salt = salt[:8]
	}
	return "$1$" + salt + "$" + md5CryptHash([]byte(password), []byte(salt))
}

// MD5CryptHash is the hash part of MD5Crypt, the 22 characters after the
// last '$': what the Whatsminer API calls the key and the sign.
func MD5CryptHash(password, salt string) string {
	if len(salt) > 8 {
		salt = salt[:8]
	}
	return md5CryptHash([]byte(password), []byte(salt))
}

func md5CryptHash(pw, salt []byte) string {
	const magic = "$1$"
	alt := md5.New()
	alt.Write(pw)
	alt.Write(salt)
	alt.Write(pw)
	altSum := alt.Sum(nil)

	h := md5.New()
	h.Write(pw)
	h.Write([]byte(magic))
	h.Write(salt)
	for n := len(pw); n > 0; n -= 16 {
		h.Write(altSum[:min(n, 16)])
	}
	for n := len(pw); n > 0; n >>= 1 {
		if n&1 != 0 {
			h.Write([]byte{0})
		} else {
			h.Write(pw[:1])
		}
	}
	sum := h.Sum(nil)

	// 1000 rounds, deliberately slow in 1994; cheap now, but it is the scheme.
	for i := 0; i < 1000; i++ {
		r := md5.New()
		if i&1 != 0 {
			r.Write(pw)
		} else {
			r.Write(sum)
		}
		if i%3 != 0 {
			r.Write(salt)
		}
		if i%7 != 0 {
			r.Write(pw)
		}
		if i&1 != 0 {
			r.Write(sum)
		} else {
			r.Write(pw)
		}
		sum = r.Sum(sum[:0])
	}

	out := make([]byte, 0, 22)
	put := func(v uint32, n int) {
		for ; n > 0; n-- {
			out = append(out, cryptAlphabet[v&0x3f])
			v >>= 6
		}
	}
	// The scheme's byte shuffle: triples taken 6 apart, then the last byte.
	for _, t := range [5][3]int{{0, 6, 12}, {1, 7, 13}, {2, 8, 14}, {3, 9, 15}, {4, 10, 5}} {
		put(uint32(sum[t[0]])<<16|uint32(sum[t[1]])<<8|uint32(sum[t[2]]), 4)
	}
	put(uint32(sum[11]), 2)
	return string(out)
}

// V2Keys derives what API v2's privileged commands need from a get_token
// reply: the AES-256 key and the sign. It is V2Key, V2AESKey and V2Sign in
// one call.
func V2Keys(password, salt, newsalt, time string) (aesKey []byte, sign string) {
	key := V2Key(password, salt)
	return V2AESKey(key), V2Sign(key, time, newsalt)
}

// V2Key is the MD5-crypt hash of the admin password with the miner's salt.
// The salt is the one the miner's stored password hash uses, so the key is
// the same for every token of a miner: callers may cache it by salt.
func V2Key(password, salt string) string { return MD5CryptHash(password, salt) }

// V2AESKey is the AES-256 key of the encrypted envelope: SHA-256 of the key.
func V2AESKey(key string) []byte {
	k := sha256.Sum256([]byte(key))
	return k[:]
}

// V2Sign is a token's sign: the MD5-crypt hash of the key followed by the
// token's time, with the token's newsalt.
func V2Sign(key, time, newsalt string) string { return MD5CryptHash(key+time, newsalt) }

// EncryptECB encrypts plaintext with AES-256 in ECB mode, NUL-padded to the
// block size as the Whatsminer firmware expects (not PKCS#7), and returns it
// base64-encoded (standard alphabet, no line breaks).
func EncryptECB(key, plaintext []byte) (string, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return "", err
	}
	n := (len(plaintext) + aes.BlockSize - 1) / aes.BlockSize * aes.BlockSize
	if n == 0 {
		n = aes.BlockSize
	}
	buf := make([]byte, n)
	copy(buf, plaintext)
	for i := 0; i < n; i += aes.BlockSize {
		block.Encrypt(buf[i:i+aes.BlockSize], buf[i:i+aes.BlockSize])
	}
	return base64.StdEncoding.EncodeToString(buf), nil
}

// DecryptECB reverses EncryptECB: base64, then AES-256-ECB, then the NUL
// padding stripped. Ciphertext that is not whole blocks is an error.
func DecryptECB(key []byte, b64 string) ([]byte, error) {
	ct, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return nil, fmt.Errorf("base64: %w", err)
	}
	if len(ct) == 0 || len(ct)%aes.BlockSize != 0 {
		return nil, fmt.Errorf("ciphertext of %d bytes is not whole %d-byte blocks", len(ct), aes.BlockSize)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	for i := 0; i < len(ct); i += aes.BlockSize {
		block.Decrypt(ct[i:i+aes.BlockSize], ct[i:i+aes.BlockSize])
	}
	return bytes.TrimRight(ct, "\x00"), nil
}

// V3Token is API v3's write token: the first 8 characters of the base64 of
// SHA-256(command + account password + salt + unix seconds).
func V3Token(cmd, password, salt string, ts int64) string {
	sum := sha256.Sum256([]byte(cmd + password + salt + strconv.FormatInt(ts, 10)))
	return base64.StdEncoding.EncodeToString(sum[:])[:8]
}
