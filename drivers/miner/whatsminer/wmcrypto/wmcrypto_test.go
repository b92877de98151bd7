package wmcrypto

import (
	"encoding/hex"
	"testing"
)

// Vectors printed by `openssl passwd -1 -salt SALT PASSWORD` (OpenSSL 3).
func TestMD5CryptMatchesOpenSSL(t *testing.T) {
	for _, c := range []struct{ pw, salt, want string }{
		{"admin", "BQ5hoXV9", "$1$BQ5hoXV9$RxmaDUO33TS7O26yeMHZ81"},
		{"hunter2", "ab", "$1$ab$YTP8LwpHAEK53FJF7Ni8G/"},
		{"x", "12345678901", "$1$12345678$7y7mHQRucjgVYVF1mZqKC1"}, // salt cut to 8
		{"averyveryverylongpassword_with_more_than_32_chars_xx", "saltsalt", "$1$saltsalt$HEGo2/iRmJkX4khoe62b.0"},
		{"pässwörd", "./Az09", "$1$./Az09$gYkHfTLZrKEdTy6GAVvsY1"},
		{"", "abc", "$1$abc$Or2rbeUYTvt12aiVzMuS/."},
	} {
		if got := MD5Crypt(c.pw, c.salt); got != c.want {
			t.Errorf("MD5Crypt(%q, %q) = %q, want %q", c.pw, c.salt, got, c.want)
		}
	}
}

// Expected values computed with openssl: key = passwd -1 of the password,
// sign = passwd -1 of key+time with newsalt, aes = sha256sum of key.
func TestV2Keys(t *testing.T) {
	key, sign := V2Keys("admin", "BQ5hoXV9", "nEwSaLt1", "1759800000")
	if sign != "Jn6jeiUscKHsfxZGIGt000" {
		t.Errorf("sign = %q", sign)
	}
	if got := hex.EncodeToString(key); got != "199e0a202039bb7b558db7a54697dca29cb278055b7e659a127fb844d5a2fbf6" {
		t.Errorf("aes key = %s", got)
	}
}

// Ciphertext from `openssl enc -aes-256-ecb -nopad` of the NUL-padded text.
func TestEncryptECBMatchesOpenSSL(t *testing.T) {
	key, _ := hex.DecodeString("199e0a202039bb7b558db7a54697dca29cb278055b7e659a127fb844d5a2fbf6")
	pt := `{"cmd":"power_off","token":"x"}`
	got, err := EncryptECB(key, []byte(pt))
	if err != nil {
		t.Fatal(err)
	}
	if want := "p/QzYk8jszmQrR9dnOEVtafhb7VyT8Kfu2lFFlfkkVA="; got != want {
		t.Fatalf("EncryptECB = %s, want %s", got, want)
	}
	back, err := DecryptECB(key, got)
	if err != nil || string(back) != pt {
		t.Fatalf("DecryptECB = %q, %v", back, err)
	}
}

func TestDecryptECBRejectsPartialBlocks(t *testing.T) {
	key := make([]byte, 32)
	for _, in := range []string{"", "AAAA", "!!!notbase64", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" /* 24 bytes */} {
		if _, err := DecryptECB(key, in); err == nil {
			t.Errorf("DecryptECB(%q) accepted", in)
		}
	}
	if _, err := EncryptECB(make([]byte, 7), []byte("x")); err == nil {
		t.Error("EncryptECB accepted a 7-byte key")
	}
}

// The v3 example: base64(sha256("set.miner.service"+"super"+"Abc123xy"+"1759800000"))[:8],
// checked with Python's hashlib.
func TestV3Token(t *testing.T) {
	if got := V3Token("set.miner.service", "super", "Abc123xy", 1759800000); got != "Cg2iuKaj" {
		t.Fatalf("V3Token = %q", got)
	}
}

func BenchmarkV2Keys(b *testing.B) {
	for i := 0; i < b.N; i++ {
		V2Keys("admin", "BQ5hoXV9", "nEwSaLt1", "1759800000")
	}
}
