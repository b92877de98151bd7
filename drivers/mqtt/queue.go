package mqtt

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Queue is the store-and-forward queue between Publish and the broker: a
// bounded FIFO of messages, on disk when it has a directory (in memory
// otherwise), that survives broker outages and agent restarts.
//
// Layout. The queue is a list of spools, oldest first. Each spool is a FIFO
// of records in segment files (<dir>/<spool>/<first seq>.seg) with a head
// cursor (<dir>/<spool>/head) marking the first record not yet confirmed by
// the broker. New messages are appended to the last spool, the live one.
// When a new session with the broker begins (and when the agent starts),
// the live spool becomes history and a fresh live spool starts: so what
// waited for the broker is exactly what the history spools hold, and it is
// sent marked historical, after live messages and at a throttled rate.
//
// Durability. A record is written to its segment file (write(2), so it
// survives the agent being killed) before Push returns, and fsync'd by a
// background goroutine within syncEvery (so it survives a power loss but
// for that last moment). Head cursors are saved and fsync'd on the same
// beat; after a crash, up to syncEvery of already confirmed messages are
// sent again: delivery is at least once.
//
// Bounds. The queue holds at most maxCount records and maxBytes of them;
// when a push would exceed either, the oldest waiting records are dropped
// (drop-oldest: the newest data is the most useful to central ops) and
// counted. Segment files are deleted once every record in them is
// confirmed or dropped.
type Queue struct {
	mu       sync.Mutex
	dir      string // "" in memory
	lock     *os.File
	log      *slog.Logger
	spools   []*spool // oldest first; the last one is live
	nextSeq  uint64
	nextID   uint64
	maxCount uint64
	maxBytes int64
	segSize  int64
	count    uint64 // records waiting, in every spool
	bytes    int64  // their size
	stats    QueueStats
	closed   bool
	dirs     map[string]bool // directories whose entries changed since the last sync

	syncStop chan struct{}
	syncDone chan struct{}
	syncErr  error // the last fsync failure, reported once
}

// QueueStats are the queue's counters since it was opened.
type QueueStats struct {
	Waiting   uint64 // records waiting (including those in flight)
	Bytes     int64  // their size
	History   uint64 // of which queued before the current session
	Enqueued  uint64 // records accepted
	Confirmed uint64 // records confirmed by the broker
	Replayed  uint64 // of which historical
	Dropped   uint64 // records dropped to make room (oldest first)
	Corrupt   uint64 // records lost to a damaged file (counted in Dropped too)
	Expired   uint64 // records not sent because their Expires had passed
	Recovered uint64 // records found on disk when opened
	OnDisk    bool
	Oldest    time.Time // when the oldest waiting record was queued; zero when none
}

const (
	recHeader = 8  // body length, CRC-32C of the body
	bodyFixed = 28 // seq, queued (unix ns), expires (unix ns, 0: never), qos, flags, topic length
	maxRecord = 256 << 20
	syncEvery = 50 * time.Millisecond
	headSize  = 28 // seq, segment first seq, offset, CRC-32C
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// entry is one queued message.
type entry struct {
	seq    uint64
	queued int64 // unix ns
	msg    Message
}

func encodeRecord(buf []byte, r entry) []byte {
	n := bodyFixed + len(r.msg.Topic) + len(r.msg.Payload)
	if cap(buf) < recHeader+n {
		buf = make([]byte, recHeader+n)
	}
	buf = buf[:recHeader+n]
	clear(buf[recHeader : recHeader+bodyFixed])
	b := buf[recHeader:]
	binary.LittleEndian.PutUint64(b[0:], r.seq)
	binary.LittleEndian.PutUint64(b[8:], uint64(r.queued))
	if !r.msg.Expires.IsZero() {
		binary.LittleEndian.PutUint64(b[16:], uint64(r.msg.Expires.UnixNano()))
	}
	b[24] = r.msg.QoS
	if r.msg.Retain {
		b[25] = 1
	}
	binary.LittleEndian.PutUint16(b[26:], uint16(len(r.msg.Topic)))
	copy(b[bodyFixed:], r.msg.Topic)
	copy(b[bodyFixed+len(r.msg.Topic):], r.msg.Payload)
	binary.LittleEndian.PutUint32(buf[0:], uint32(n))
	binary.LittleEndian.PutUint32(buf[4:], crc32.Checksum(b, castagnoli))
	return buf
}

var errCorrupt = errors.New("damaged record")

// decodeBody parses a record body whose CRC was checked; the message's
// payload aliases b.
func decodeBody(b []byte) (entry, error) {
	if len(b) < bodyFixed {
		return entry{}, errCorrupt
	}
	tl := int(binary.LittleEndian.Uint16(b[26:]))
	if bodyFixed+tl > len(b) || b[24] > 2 || b[25] > 1 {
		return entry{}, errCorrupt
	}
	e := entry{
		seq:    binary.LittleEndian.Uint64(b[0:]),
		queued: int64(binary.LittleEndian.Uint64(b[8:])),
		msg: Message{
			QoS:     b[24],
			Retain:  b[25] == 1,
			Topic:   string(b[bodyFixed : bodyFixed+tl]),
			Payload: b[bodyFixed+tl:],
		},
	}
	if x := int64(binary.LittleEndian.Uint64(b[16:])); x != 0 {
		e.msg.Expires = time.Unix(0, x)
	}
	return e, nil
}

// segment is one file (or memory block) of records with consecutive
// sequence numbers first..next-1.
type segment struct {
	first, next uint64
	size        int64
	path        string
	f           *os.File // nil in memory
	mem         []byte
	dirty       bool // written since the last fsync
}

func (s *segment) write(b []byte) error {
	if s.f == nil {
		s.mem = append(s.mem, b...)
		s.size += int64(len(b))
		return nil
	}
	n, err := s.f.WriteAt(b, s.size)
	if err != nil {
		// Cut a partial write off, so that the file stays a list of
		// whole records.
		if n > 0 {
			_ = s.f.Truncate(s.size)
		}
		return err
	}
	s.size += int64(n)
	s.dirty = true
	return nil
}

// readAt returns n bytes at off: a view of memory, or a fresh buffer.
func (s *segment) readAt(off int64, n int) ([]byte, error) {
	if off < 0 || n < 0 || off+int64(n) > s.size {
		return nil, io.ErrUnexpectedEOF
	}
	if s.f == nil {
		return s.mem[off : off+int64(n) : off+int64(n)], nil
	}
	b := make([]byte, n)
	if _, err := s.f.ReadAt(b, off); err != nil {
		return nil, err
	}
	return b, nil
}

// readRecord reads the record at off and returns it with its stored size.
func (s *segment) readRecord(off int64) (entry, int64, error) {
	h, err := s.readAt(off, recHeader)
	if err != nil {
		return entry{}, 0, errCorrupt
	}
	n := binary.LittleEndian.Uint32(h[0:])
	if n < bodyFixed || n > maxRecord || off+recHeader+int64(n) > s.size {
		return entry{}, 0, errCorrupt
	}
	body, err := s.readAt(off+recHeader, int(n))
	if err != nil {
		return entry{}, 0, errCorrupt
	}
	if crc32.Checksum(body, castagnoli) != binary.LittleEndian.Uint32(h[4:]) {
		return entry{}, 0, errCorrupt
	}
	r, err := decodeBody(body)
	return r, recHeader + int64(n), err
}

// recordSize reads only the length of the record at off.
func (s *segment) recordSize(off int64) (int64, bool) {
	h, err := s.readAt(off, recHeader)
	if err != nil {
		return 0, false
	}
	n := int64(binary.LittleEndian.Uint32(h[0:]))
	if n < bodyFixed || n > maxRecord || off+recHeader+n > s.size {
		return 0, false
	}
	return recHeader + n, true
}

func (s *segment) close(remove bool) {
	if s.f != nil {
		_ = s.f.Close()
		if remove {
			_ = os.Remove(s.path)
		}
	}
	s.mem = nil
}

// cursor is a position in a spool: the record numbered seq, at off in seg.
type cursor struct {
	seg *segment
	off int64
	seq uint64
}

// spool is one FIFO of records.
type spool struct {
	id   uint64
	dir  string
	segs []*segment
	head cursor // first record not confirmed or dropped
	read cursor // next record to hand to the sender
	end  uint64 // seq after the last record (when segs is empty: the first to come)
	// unsure counts the records just before head that were dropped to
	// make room while they were in flight: the broker may still confirm
	// them. A confirmation counts them delivered; a rewind, dropped.
	unsure    uint64
	headDirty bool
	headFile  *os.File
}

func (sp *spool) waiting() uint64 { return sp.end - sp.head.seq }

func (sp *spool) size() int64 {
	var n int64
	for _, s := range sp.segs {
		n += s.size
	}
	return n - sp.head.off
}

// settle moves c past the end of a segment that has a successor.
func (sp *spool) settle(c *cursor) {
	if c.seg == nil && len(sp.segs) > 0 {
		c.seg, c.off = sp.segs[0], 0
	}
	for c.seg != nil && c.off >= c.seg.size {
		i := sp.index(c.seg)
		if i < 0 || i+1 >= len(sp.segs) {
			return
		}
		c.seg, c.off, c.seq = sp.segs[i+1], 0, sp.segs[i+1].first
	}
}

func (sp *spool) index(s *segment) int {
	for i, x := range sp.segs {
		if x == s {
			return i
		}
	}
	return -1
}

// skipSegment moves c to the start of the segment after its own (a damaged
// segment), or to the end of the spool; it returns the records skipped.
func (sp *spool) skipSegment(c *cursor) uint64 {
	i := sp.index(c.seg)
	from := c.seq
	if i >= 0 && i+1 < len(sp.segs) {
		c.seg, c.off, c.seq = sp.segs[i+1], 0, sp.segs[i+1].first
	} else {
		c.off, c.seq = c.seg.size, sp.end
	}
	return c.seq - from
}

// OpenQueue opens the queue in dir, creating it if needed, and takes every
// record found there as history; dir "" keeps the queue in memory.
// maxCount and maxBytes bound it (see Queue).
func OpenQueue(dir string, maxCount int, maxBytes int64, log *slog.Logger) (*Queue, error) {
	if log == nil {
		log = slog.Default()
	}
	if maxCount < 1 || maxBytes < 1 {
		return nil, fmt.Errorf("queue bounds %d records, %d bytes: both must be positive", maxCount, maxBytes)
	}
	q := &Queue{
		dir: dir, log: log, maxCount: uint64(maxCount), maxBytes: maxBytes,
		segSize: min(max(maxBytes/8, 64<<10), 8<<20), dirs: map[string]bool{},
		syncStop: make(chan struct{}), syncDone: make(chan struct{}),
	}
	q.stats.OnDisk = dir != ""
	if dir != "" {
		if err := q.openDir(); err != nil {
			if q.lock != nil {
				q.lock.Close()
			}
			return nil, err
		}
	}
	if err := q.newLive(); err != nil {
		q.closeFiles()
		return nil, err
	}
	for q.count > q.maxCount || q.bytes > q.maxBytes {
		// The bounds may have shrunk since the records were written.
		q.dropOldest()
	}
	if dir != "" {
		go q.syncLoop()
	} else {
		close(q.syncDone)
	}
	return q, nil
}

func (q *Queue) openDir() error {
	if err := os.MkdirAll(q.dir, 0o750); err != nil {
		return fmt.Errorf("queue directory: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(q.dir, "lock"), os.O_CREATE|os.O_RDWR, 0o640)
	if err != nil {
		return fmt.Errorf("queue directory: %w", err)
	}
	q.lock = lock
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return fmt.Errorf("queue directory %s is in use by another process (%v); give each agent its own state directory or client id", q.dir, err)
	}
	entries, err := os.ReadDir(q.dir)
	if err != nil {
		return fmt.Errorf("queue directory: %w", err)
	}
	var ids []uint64
	for _, e := range entries {
		if id, err := strconv.ParseUint(e.Name(), 10, 64); err == nil && e.IsDir() {
			ids = append(ids, id)
		}
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	for _, id := range ids {
		sp, err := q.loadSpool(id)
		if err != nil {
			return err
		}
		q.nextID = id + 1
		if sp == nil {
			continue
		}
		if sp.end > q.nextSeq {
			q.nextSeq = sp.end
		}
		if sp.waiting() == 0 {
			q.removeSpool(sp)
			continue
		}
		q.spools = append(q.spools, sp)
		q.count += sp.waiting()
		q.bytes += sp.size()
		q.stats.Recovered += sp.waiting()
	}
	if q.stats.Recovered > 0 {
		q.log.Info("mqtt queue: messages from before the restart will be sent as historical", "messages", q.stats.Recovered, "dir", q.dir)
	}
	return nil
}

// loadSpool reads one spool directory; nil when it holds nothing usable.
func (q *Queue) loadSpool(id uint64) (*spool, error) {
	dir := filepath.Join(q.dir, fmt.Sprintf("%020d", id))
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("queue directory: %w", err)
	}
	sp := &spool{id: id, dir: dir}
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".seg")
		first, err := strconv.ParseUint(name, 10, 64)
		if !ok || err != nil {
			continue
		}
		path := filepath.Join(dir, e.Name())
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			return nil, fmt.Errorf("queue segment: %w", err)
		}
		st, err := f.Stat()
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("queue segment: %w", err)
		}
		sp.segs = append(sp.segs, &segment{first: first, size: st.Size(), path: path, f: f})
	}
	sort.Slice(sp.segs, func(i, j int) bool { return sp.segs[i].first < sp.segs[j].first })
	for i, s := range sp.segs[:max(len(sp.segs)-1, 0)] {
		s.next = sp.segs[i+1].first
	}
	if len(sp.segs) > 0 {
		q.scanTail(sp.segs[len(sp.segs)-1])
		sp.end = sp.segs[len(sp.segs)-1].next
	}
	hf, err := os.OpenFile(filepath.Join(dir, "head"), os.O_CREATE|os.O_RDWR, 0o640)
	if err != nil {
		return nil, fmt.Errorf("queue head: %w", err)
	}
	sp.headFile = hf
	if len(sp.segs) == 0 {
		return sp, nil
	}
	sp.head = cursor{seg: sp.segs[0], seq: sp.segs[0].first}
	var h [headSize]byte
	if n, _ := hf.ReadAt(h[:], 0); n == headSize && crc32.Checksum(h[:24], castagnoli) == binary.LittleEndian.Uint32(h[24:]) {
		seq := binary.LittleEndian.Uint64(h[0:])
		first := binary.LittleEndian.Uint64(h[8:])
		off := int64(binary.LittleEndian.Uint64(h[16:]))
		for _, s := range sp.segs {
			if s.first == first && off <= s.size && seq >= s.first && seq <= s.next {
				sp.head = cursor{seg: s, off: off, seq: seq}
			}
		}
	}
	// Segments wholly before the head were confirmed before the restart.
	for len(sp.segs) > 1 && sp.segs[0] != sp.head.seg {
		sp.segs[0].close(true)
		sp.segs = sp.segs[1:]
	}
	sp.settle(&sp.head)
	sp.read = sp.head
	return sp, nil
}

// scanTail checks every record of the segment that was last written to and
// cuts off a record torn by a crash, or anything after damage.
func (q *Queue) scanTail(s *segment) {
	s.next = s.first
	var off int64
	for off < s.size {
		r, n, err := s.readRecord(off)
		if err != nil || r.seq != s.next {
			q.log.Warn("mqtt queue: cutting off a damaged or torn record at the end of a segment", "file", s.path, "offset", off, "bytes", s.size-off)
			_ = s.f.Truncate(off)
			s.size = off
			s.dirty = true
			return
		}
		off += n
		s.next++
	}
}

// newLive starts a fresh live spool.
func (q *Queue) newLive() error {
	sp := &spool{id: q.nextID, end: q.nextSeq}
	sp.head.seq, sp.read.seq = q.nextSeq, q.nextSeq
	q.nextID++
	if q.dir != "" {
		sp.dir = filepath.Join(q.dir, fmt.Sprintf("%020d", sp.id))
		if err := os.Mkdir(sp.dir, 0o750); err != nil {
			return fmt.Errorf("queue directory: %w", err)
		}
		hf, err := os.OpenFile(filepath.Join(sp.dir, "head"), os.O_CREATE|os.O_RDWR, 0o640)
		if err != nil {
			return fmt.Errorf("queue head: %w", err)
		}
		sp.headFile = hf
		q.dirs[q.dir] = true
		q.dirs[sp.dir] = true
	}
	q.spools = append(q.spools, sp)
	return nil
}

func (q *Queue) live() *spool { return q.spools[len(q.spools)-1] }

// removeSpool deletes a spool that holds nothing waiting.
func (q *Queue) removeSpool(sp *spool) {
	for _, s := range sp.segs {
		s.close(true)
	}
	sp.segs = nil
	if sp.headFile != nil {
		sp.headFile.Close()
		sp.headFile = nil
	}
	if sp.dir != "" {
		_ = os.RemoveAll(sp.dir)
		q.dirs[q.dir] = true
	}
}

// Push appends m. It returns how many older records were dropped to make
// room, and an error when m cannot be stored (then m is not queued).
func (q *Queue) Push(m Message, now time.Time) (int, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return 0, errors.New("queue closed")
	}
	buf := encodeRecord(nil, entry{seq: q.nextSeq, queued: now.UnixNano(), msg: m})
	size := int64(len(buf))
	if size > q.maxBytes || size > maxRecord {
		return 0, fmt.Errorf("message of %d bytes is larger than the queue (%d bytes)", size, q.maxBytes)
	}
	dropped := 0
	for q.count > 0 && (q.count+1 > q.maxCount || q.bytes+size > q.maxBytes) {
		dropped += q.dropOldest()
	}
	sp := q.live()
	seg := sp.lastSeg()
	if seg == nil || seg.size >= q.segSize {
		var err error
		if seg, err = q.newSegment(sp); err != nil {
			return dropped, err
		}
	}
	if err := seg.write(buf); err != nil {
		return dropped, fmt.Errorf("queue write: %w", err)
	}
	seg.next++
	sp.end = seg.next
	q.nextSeq++
	q.count++
	q.bytes += size
	q.stats.Enqueued++
	sp.settle(&sp.head)
	sp.settle(&sp.read)
	return dropped, nil
}

func (sp *spool) lastSeg() *segment {
	if len(sp.segs) == 0 {
		return nil
	}
	return sp.segs[len(sp.segs)-1]
}

func (q *Queue) newSegment(sp *spool) (*segment, error) {
	s := &segment{first: sp.end, next: sp.end}
	if q.dir != "" {
		s.path = filepath.Join(sp.dir, fmt.Sprintf("%020d.seg", s.first))
		f, err := os.OpenFile(s.path, os.O_CREATE|os.O_RDWR|os.O_TRUNC, 0o640)
		if err != nil {
			return nil, fmt.Errorf("queue segment: %w", err)
		}
		s.f = f
		q.dirs[sp.dir] = true
	}
	sp.segs = append(sp.segs, s)
	return s, nil
}

// dropOldest drops the oldest waiting record (or, in a damaged segment, the
// rest of it) and returns how many records went.
func (q *Queue) dropOldest() int {
	for _, sp := range q.spools {
		if sp.waiting() == 0 {
			continue
		}
		sp.settle(&sp.head)
		before := sp.head.seq
		inFlight := sp.head.seq < sp.read.seq
		if n, ok := sp.head.seg.recordSize(sp.head.off); ok {
			sp.head.off += n
			sp.head.seq++
		} else {
			q.stats.Corrupt += sp.skipSegment(&sp.head)
			inFlight = false
		}
		gone := sp.head.seq - before
		if inFlight {
			sp.unsure += gone // decided by the confirmation or the rewind
		} else {
			q.stats.Dropped += gone
		}
		q.afterHeadMoved(sp)
		return int(gone)
	}
	return 0
}

// afterHeadMoved recounts, keeps the read cursor at or after the head and
// frees segments and spools the head has left behind.
func (q *Queue) afterHeadMoved(sp *spool) {
	sp.headDirty = true
	sp.settle(&sp.head)
	if sp.read.seq < sp.head.seq {
		sp.read = sp.head
	}
	for len(sp.segs) > 0 && sp.segs[0] != sp.head.seg {
		sp.segs[0].close(true)
		sp.segs = sp.segs[1:]
	}
	q.recount()
	if sp != q.live() && sp.waiting() == 0 && sp.unsure == 0 {
		q.removeSpool(sp)
		for i, x := range q.spools {
			if x == sp {
				q.spools = append(q.spools[:i], q.spools[i+1:]...)
				break
			}
		}
	}
}

func (q *Queue) recount() {
	q.count, q.bytes = 0, 0
	for _, sp := range q.spools {
		q.count += sp.waiting()
		q.bytes += sp.size()
	}
}

// Rotate makes everything waiting history: called when a session with the
// broker begins. It rewinds every spool to its head, so that what was in
// flight on the last connection is sent again.
func (q *Queue) Rotate() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, sp := range q.spools {
		q.settleUnsure(sp)
		sp.read = sp.head
	}
	if q.live().waiting() == 0 {
		return nil
	}
	return q.newLive()
}

// Rewind hands every unconfirmed record out again.
func (q *Queue) Rewind() {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, sp := range q.spools {
		q.settleUnsure(sp)
		sp.read = sp.head
	}
}

// settleUnsure counts the records dropped while in flight as dropped: no
// confirmation will come for them any more.
func (q *Queue) settleUnsure(sp *spool) {
	q.stats.Dropped += sp.unsure
	sp.unsure = 0
}

// batch is what the sender takes from the queue in one go.
type batch struct {
	recs       []entry
	hist       []bool // from a history spool: sent marked historical
	skip       []bool // expired: not sent
	ends       []spoolEnd
	size       int64
	expired    int
	expiredOld int
}

type spoolEnd struct {
	sp  *spool
	at  cursor
	n   uint64 // records taken
	old bool   // a history spool
}

func (b *batch) reset() {
	for i := range b.recs {
		b.recs[i] = entry{}
	}
	b.recs, b.hist, b.skip, b.ends, b.size = b.recs[:0], b.hist[:0], b.skip[:0], b.ends[:0], 0
	b.expired, b.expiredOld = 0, 0
}

// Take fills b with up to maxLive live records, then up to maxHist
// historical ones, oldest first in each lane, within about maxBytes. It
// returns the number of live and historical records taken.
func (q *Queue) Take(b *batch, maxLive, maxHist int, maxBytes int64) (live, hist int) {
	now := time.Now()
	q.mu.Lock()
	defer q.mu.Unlock()
	b.reset()
	live = q.takeFrom(b, q.live(), maxLive, maxBytes, false, now)
	for _, sp := range q.spools[:len(q.spools)-1] {
		if hist >= maxHist {
			break
		}
		hist += q.takeFrom(b, sp, maxHist-hist, maxBytes, true, now)
	}
	return live, hist
}

func (q *Queue) takeFrom(b *batch, sp *spool, limit int, maxBytes int64, old bool, now time.Time) int {
	n := 0
	sp.settle(&sp.read)
	for n < limit && sp.read.seq < sp.end && (b.size < maxBytes || len(b.recs) == 0) {
		r, size, err := sp.read.seg.readRecord(sp.read.off)
		if err == nil && r.seq != sp.read.seq {
			err = errCorrupt
		}
		if err != nil {
			if sp.read.seq != sp.head.seq {
				// Records before the damage are still in flight: take
				// nothing more from here until they are confirmed.
				break
			}
			q.log.Error("mqtt queue: damaged record; dropping the rest of its segment", "file", sp.read.seg.path, "offset", sp.read.off)
			lost := sp.skipSegment(&sp.head)
			q.stats.Corrupt += lost
			q.stats.Dropped += lost
			q.afterHeadMoved(sp)
			if !q.has(sp) {
				return n
			}
			sp.read = sp.head
			sp.settle(&sp.read)
			continue
		}
		sp.read.off += size
		sp.read.seq++
		sp.settle(&sp.read)
		// A message past its Expires goes with the batch unsent: it
		// leaves the queue when the batch is confirmed.
		expired := !r.msg.Expires.IsZero() && !now.Before(r.msg.Expires)
		if expired {
			b.expired++
			if old {
				b.expiredOld++
			}
		}
		b.skip = append(b.skip, expired)
		b.recs = append(b.recs, r)
		b.hist = append(b.hist, old)
		b.size += size
		n++
	}
	if n > 0 {
		b.ends = append(b.ends, spoolEnd{sp: sp, at: sp.read, n: uint64(n), old: old})
	}
	return n
}

// Confirm marks a whole batch as delivered.
func (q *Queue) Confirm(b *batch) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, e := range b.ends {
		sp := e.sp
		if !q.has(sp) {
			continue
		}
		// Records dropped while in flight that this batch covered were
		// delivered after all.
		if sp.unsure > 0 {
			first := sp.head.seq - sp.unsure
			if e.at.seq > first {
				got := min(e.at.seq-first, sp.unsure)
				sp.unsure -= got
				q.stats.Confirmed += got
				if e.old {
					q.stats.Replayed += got
				}
			}
		}
		if e.at.seq <= sp.head.seq {
			// The rest was dropped meanwhile; an emptied spool may go.
			q.afterHeadMoved(sp)
			continue
		}
		n := e.at.seq - sp.head.seq
		sp.head = e.at
		q.stats.Confirmed += n
		if e.old {
			q.stats.Replayed += n
		}
		q.afterHeadMoved(sp)
	}
	// Expired messages left with the batch but were never sent.
	q.stats.Confirmed -= min(uint64(b.expired), q.stats.Confirmed)
	q.stats.Replayed -= min(uint64(b.expiredOld), q.stats.Replayed)
	q.stats.Expired += uint64(b.expired)
}

// Discard removes a taken batch as undeliverable: counted as dropped.
func (q *Queue) Discard(b *batch) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, e := range b.ends {
		sp := e.sp
		if !q.has(sp) {
			continue
		}
		q.settleUnsure(sp)
		if e.at.seq <= sp.head.seq {
			continue
		}
		q.stats.Dropped += e.at.seq - sp.head.seq
		sp.head = e.at
		q.afterHeadMoved(sp)
	}
}

func (q *Queue) has(sp *spool) bool {
	for _, x := range q.spools {
		if x == sp {
			return true
		}
	}
	return false
}

func (q *Queue) historyWaiting() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, sp := range q.spools[:len(q.spools)-1] {
		if sp.read.seq < sp.end {
			return true
		}
	}
	return false
}

// Stats returns the counters.
func (q *Queue) Stats() QueueStats {
	q.mu.Lock()
	defer q.mu.Unlock()
	s := q.stats
	s.Waiting, s.Bytes = q.count, q.bytes
	for _, sp := range q.spools[:len(q.spools)-1] {
		s.History += sp.waiting()
	}
	for _, sp := range q.spools {
		if sp.waiting() == 0 || q.closed {
			continue
		}
		c := sp.head
		sp.settle(&c)
		// Only the queued time: Stats is called often, records can be big.
		if b, err := c.seg.readAt(c.off+recHeader+8, 8); err == nil {
			s.Oldest = time.Unix(0, int64(binary.LittleEndian.Uint64(b)))
		}
		break
	}
	return s
}

// Close saves the head cursors, fsyncs and closes every file. What is
// waiting stays on disk for the next OpenQueue.
func (q *Queue) Close() error {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return nil
	}
	q.closed = true
	q.mu.Unlock()
	if q.dir != "" {
		close(q.syncStop)
		<-q.syncDone
	}
	err := q.sync()
	q.mu.Lock()
	q.closeFiles()
	q.mu.Unlock()
	return err
}

// abandon closes every file without saving anything: what a crash leaves
// behind (tests).
func (q *Queue) abandon() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	if q.dir != "" {
		close(q.syncStop)
		<-q.syncDone
	}
	q.closeFiles()
}

func (q *Queue) closeFiles() {
	for _, sp := range q.spools {
		for _, s := range sp.segs {
			s.close(false)
		}
		if sp.headFile != nil {
			sp.headFile.Close()
		}
	}
	if q.lock != nil {
		q.lock.Close() // releases the flock
	}
}

func (q *Queue) syncLoop() {
	defer close(q.syncDone)
	t := time.NewTicker(syncEvery)
	defer t.Stop()
	for {
		select {
		case <-q.syncStop:
			return
		case <-t.C:
			if err := q.sync(); err != nil {
				if q.syncErr == nil || q.syncErr.Error() != err.Error() {
					q.log.Error("mqtt queue: fsync failed; queued messages may not survive a power loss", "err", err)
				}
				q.syncErr = err
			} else {
				q.syncErr = nil
			}
		}
	}
}

// sync fsyncs written segments, saves dirty heads and fsyncs changed
// directories. The slow part runs outside the lock, so Push never waits
// for the disk.
func (q *Queue) sync() error {
	type headWrite struct {
		f *os.File
		b [headSize]byte
	}
	var files []*os.File
	var heads []headWrite
	var dirs []string
	q.mu.Lock()
	for _, sp := range q.spools {
		for _, s := range sp.segs {
			if s.dirty && s.f != nil {
				files = append(files, s.f)
				s.dirty = false
			}
		}
		if sp.headDirty && sp.headFile != nil {
			var h headWrite
			h.f = sp.headFile
			c := sp.head
			first := uint64(0)
			if c.seg != nil {
				first = c.seg.first
			}
			binary.LittleEndian.PutUint64(h.b[0:], c.seq)
			binary.LittleEndian.PutUint64(h.b[8:], first)
			binary.LittleEndian.PutUint64(h.b[16:], uint64(c.off))
			binary.LittleEndian.PutUint32(h.b[24:], crc32.Checksum(h.b[:24], castagnoli))
			heads = append(heads, h)
			sp.headDirty = false
		}
	}
	for d := range q.dirs {
		dirs = append(dirs, d)
	}
	clear(q.dirs)
	q.mu.Unlock()

	var errs []error
	keep := func(err error) {
		if err != nil && !errors.Is(err, os.ErrClosed) && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	for _, f := range files {
		keep(f.Sync())
	}
	for _, h := range heads {
		_, err := h.f.WriteAt(h.b[:], 0)
		keep(err)
		keep(h.f.Sync())
	}
	for _, d := range dirs {
		if f, err := os.Open(d); err == nil {
			keep(f.Sync())
			f.Close()
		}
	}
	return errors.Join(errs...)
}
