package bench

import (
	"bufio"
	"bytes"
	"os"
	"runtime"
	"strconv"
	"syscall"
)

// ProcStats is a snapshot of a process's memory and activity.
type ProcStats struct {
	// RSS is the resident set size (VmRSS), in bytes.
	RSS uint64 `json:"rss"`
	// HeapAlloc is the Go heap's allocated bytes (live after a GC);
	// HeapInuse its in-use spans; StackInuse the goroutine stacks.
	HeapAlloc  uint64 `json:"heap_alloc"`
	HeapInuse  uint64 `json:"heap_inuse"`
	StackInuse uint64 `json:"stack_inuse"`
	// Sys is what the Go runtime got from the OS.
	Sys uint64 `json:"sys"`
	// Mallocs and TotalAlloc count allocations since start.
	Mallocs    uint64 `json:"mallocs"`
	TotalAlloc uint64 `json:"total_alloc"`
	NumGC      uint32 `json:"num_gc"`
	Goroutines int    `json:"goroutines"`
	// OpenFDs counts the process's open file descriptors (sockets included).
	OpenFDs int `json:"open_fds"`
	// CPUNanos is the CPU time the process has used, user and system.
	CPUNanos int64 `json:"cpu_ns"`
	// MinorFaults counts page faults served without I/O (ru_minflt): memory
	// the runtime gave back to the OS and touched again.
	MinorFaults int64 `json:"minflt"`
	// ReadSyscalls and WriteSyscalls count read and write system calls
	// (syscr and syscw of /proc/self/io): how well a system batches.
	ReadSyscalls  uint64 `json:"syscr"`
	WriteSyscalls uint64 `json:"syscw"`
}

// ReadProcStats reads this process's stats, after two garbage collections if
// gc is set (so that HeapAlloc is the live heap).
func ReadProcStats(gc bool) ProcStats {
	if gc {
		runtime.GC()
		runtime.GC()
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	st := ProcStats{
		HeapAlloc:  ms.HeapAlloc,
		HeapInuse:  ms.HeapInuse,
		StackInuse: ms.StackInuse,
		Sys:        ms.Sys,
		Mallocs:    ms.Mallocs,
		TotalAlloc: ms.TotalAlloc,
		NumGC:      ms.NumGC,
		Goroutines: runtime.NumGoroutine(),
		RSS:        readRSS(),
	}
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		st.CPUNanos = ru.Utime.Nano() + ru.Stime.Nano()
		st.MinorFaults = ru.Minflt
	}
	st.ReadSyscalls, st.WriteSyscalls = readIO()
	if fds, err := os.ReadDir("/proc/self/fd"); err == nil {
		st.OpenFDs = len(fds)
	}
	return st
}

// readIO returns syscr and syscw from /proc/self/io (0 if unknown).
func readIO() (r, w uint64) {
	b, err := os.ReadFile("/proc/self/io")
	if err != nil {
		return 0, 0
	}
	for line := range bytes.SplitSeq(b, []byte("\n")) {
		k, v, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		n, _ := strconv.ParseUint(string(bytes.TrimSpace(v)), 10, 64)
		switch string(k) {
		case "syscr":
			r = n
		case "syscw":
			w = n
		}
	}
	return r, w
}

// readRSS returns VmRSS from /proc/self/status, in bytes (0 if unknown).
func readRSS() uint64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Bytes()
		if v, ok := bytes.CutPrefix(line, []byte("VmRSS:")); ok {
			v = bytes.TrimSpace(bytes.TrimSuffix(bytes.TrimSpace(v), []byte("kB")))
			kb, err := strconv.ParseUint(string(v), 10, 64)
			if err != nil {
				return 0
			}
			return kb << 10
		}
	}
	return 0
}

// MachineBusyNanos returns the CPU time all CPUs of the machine have spent
// busy (everything but idle and iowait) since boot, from /proc/stat, and the
// number of CPUs counted.
func MachineBusyNanos() (int64, int) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	var total int64
	cpus := 0
	for line := range bytes.SplitSeq(b, []byte("\n")) {
		fields := bytes.Fields(line)
		if len(fields) < 5 || !bytes.HasPrefix(fields[0], []byte("cpu")) {
			continue
		}
		if string(fields[0]) != "cpu" {
			cpus++
			continue
		}
		for i, f := range fields[1:] {
			if i == 3 || i == 4 { // idle, iowait
				continue
			}
			v, _ := strconv.ParseInt(string(f), 10, 64)
			total += v
		}
	}
	// /proc/stat counts in USER_HZ ticks, 100 per second on Linux.
	return total * 1e7, cpus
}
