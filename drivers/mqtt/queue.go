package mqtt

// ring is a FIFO of messages bounded by limit; it grows on demand so that a
// large queue_size costs memory only when used.
type ring struct {
	buf   []Message
	first int
	n     int
	limit int
}

func (r *ring) push(m Message) bool {
	if r.n >= r.limit {
		return false
	}
	if r.n == len(r.buf) {
		size := min(max(2*len(r.buf), 64), r.limit)
		buf := make([]Message, size)
		for i := 0; i < r.n; i++ {
			buf[i] = r.buf[(r.first+i)%len(r.buf)]
		}
		r.buf, r.first = buf, 0
	}
	r.buf[(r.first+r.n)%len(r.buf)] = m
	r.n++
	return true
}

func (r *ring) head() Message { return r.buf[r.first] }

func (r *ring) pop() {
	r.buf[r.first] = Message{} // let the payload be collected
	r.first = (r.first + 1) % len(r.buf)
	r.n--
}

func (r *ring) clear() { r.buf, r.first, r.n = nil, 0, 0 }
