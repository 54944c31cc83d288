import KilnCore

/// Which builds the archiver looks at next, and when a failed one is tried again. Pure: the
/// caller passes the time.
///
/// Rules, in order:
/// 1. A build offered is due at once, unless it is queued already or waits out its own
///    failure's delay (then it keeps that time: a new chunk of the build does not hurry it).
/// 2. `take` hands out the build due first (in the order they were offered when due alike),
///    and only a due one; nothing while the archive is paused (rule 4). A build handed out and
///    offered again (another chunk ended meanwhile) is due again.
/// 3. A failure of one build (its record or a chunk changed, its archived file unreadable,
///    etcd failing) puts that build back after `retryAfter`, doubled with each failure of it
///    in a row up to `retryAtMost`.
/// 4. A failure of the archive itself (it could not store) pauses the whole queue the same
///    way, counted over the archive's failures in a row; the build is due again when the pause
///    ends. So an archive that is down is tried once per pause, not once per waiting build.
/// 5. A success forgets the build's failures and the archive's.
/// 6. No failure drops a build: builds never wait for the archive, and the archive never
///    gives up on a build.
struct ArchiveQueue: Sendable {
    let retryAfter: Duration
    let retryAtMost: Duration
    /// When each queued build is due; the heap's entries that disagree are stale.
    private var due: [String: ContinuousClock.Instant] = [:]
    private var heap = Heap()
    private var offered = 0
    private var failures: [String: Int] = [:]
    /// The archive's failures in a row, and until when nothing is taken.
    private(set) var archiveFailures = 0
    private(set) var pausedUntil: ContinuousClock.Instant?

    init(retryAfter: Duration, retryAtMost: Duration) {
        self.retryAfter = retryAfter
        self.retryAtMost = max(retryAtMost, retryAfter)
    }

    /// Builds waiting (due now or later).
    var count: Int { due.count }
    /// Builds whose last pass failed on their own (rule 3).
    var failing: Int { failures.count }

    /// Rule 1.
    mutating func offer(_ build: String, now: ContinuousClock.Instant) {
        if due[build] != nil { return }
        schedule(build, at: now)
    }

    /// Rule 2: the build due first, removed from the queue; nil when none is due.
    mutating func take(now: ContinuousClock.Instant) -> String? {
        if let pause = pausedUntil, pause > now { return nil }
        while let top = heap.first {
            guard due[top.build] == top.at else {
                heap.removeFirst()  // stale: the build was taken or moved since
                continue
            }
            guard top.at <= now else { return nil }
            heap.removeFirst()
            due[top.build] = nil
            return top.build
        }
        return nil
    }

    /// Rule 3: the build is tried again after the returned delay.
    @discardableResult
    mutating func failed(_ build: String, now: ContinuousClock.Instant) -> Duration {
        let n = (failures[build] ?? 0) + 1
        failures[build] = n
        let delay = backoff(n)
        schedule(build, at: now + delay)
        return delay
    }

    /// Rule 4: nothing is taken for the returned delay; then `build` first.
    @discardableResult
    mutating func archiveFailed(_ build: String, now: ContinuousClock.Instant) -> Duration {
        archiveFailures += 1
        let delay = backoff(archiveFailures)
        pausedUntil = now + delay
        schedule(build, at: now)
        return delay
    }

    /// The failures of `build` in a row so far (rule 3).
    func failures(of build: String) -> Int { failures[build] ?? 0 }

    /// Rule 5.
    mutating func succeeded(_ build: String) {
        failures[build] = nil
        archiveFailures = 0
        pausedUntil = nil
    }

    private mutating func schedule(_ build: String, at: ContinuousClock.Instant) {
        due[build] = at
        offered += 1
        heap.insert(.init(at: at, order: offered, build: build))
    }

    private func backoff(_ n: Int) -> Duration {
        var delay = retryAfter
        for _ in 1..<min(n, 32) where delay < retryAtMost { delay = delay * 2 }
        return min(delay, retryAtMost)
    }

    /// A binary min-heap of (time, order of offer): the next build in O(log n), so a first
    /// walk that finds 100,000 builds with logs does not make each take scan them all.
    struct Heap: Sendable {
        struct Entry: Sendable {
            var at: ContinuousClock.Instant
            var order: Int
            var build: String
            func precedes(_ other: Entry) -> Bool { at != other.at ? at < other.at : order < other.order }
        }
        private var items: [Entry] = []

        var first: Entry? { items.first }

        mutating func insert(_ e: Entry) {
            items.append(e)
            var i = items.count - 1
            while i > 0 {
                let parent = (i - 1) / 2
                guard items[i].precedes(items[parent]) else { break }
                items.swapAt(i, parent)
                i = parent
            }
        }

        mutating func removeFirst() {
            guard !items.isEmpty else { return }
            items.swapAt(0, items.count - 1)
            items.removeLast()
            var i = 0
            while true {
                let l = 2 * i + 1, r = l + 1
                var m = i
                if l < items.count, items[l].precedes(items[m]) { m = l }
                if r < items.count, items[r].precedes(items[m]) { m = r }
                if m == i { return }
                items.swapAt(i, m)
                i = m
            }
        }
    }
}

/// What one archive pass of a build does, decided from its record and the chunks in etcd.
/// Pure.
///
/// Rules, in order:
/// 1. No record, or one that does not decode: nothing (chunks of a build without a record
///    are not the archiver's to judge; retention deletes record and chunks together).
/// 2. A build that has not ended, or whose pipeline run is pending or running: nothing yet
///    (the end of its log, or of its run, offers it again).
/// 3. Chunks named after the record's mark (or every chunk, without one): archive them after
///    the mark's lines, then delete them and any chunk up to the mark still in etcd.
/// 4. Only chunks up to the mark (a pass deleted part of them and stopped): delete them.
/// 5. No chunk: nothing.
enum ArchivePlan: Equatable {
    case nothing(String)
    /// Store the mark's lines and `fresh`'s, then delete `fresh` and `leftover`.
    case archive(fresh: [String], leftover: [String])
    /// Delete these chunks (all covered by the mark already).
    case delete([String])

    /// `chunks`: the names of the build's chunks in etcd, in key order.
    static func decide(build: Build?, chunks: [String]) -> ArchivePlan {
        guard let build else { return .nothing("no build record") }
        if let why = notYet(build) { return .nothing(why) }
        let mark = build.logArchive.flatMap { $0.isPlausible(on: build) ? $0.through : nil }
        let fresh = chunks.filter { LogNames.isAfter($0, mark) }
        let leftover = chunks.filter { !LogNames.isAfter($0, mark) }
        if !fresh.isEmpty { return .archive(fresh: fresh, leftover: leftover) }
        if !leftover.isEmpty { return .delete(leftover) }
        return .nothing("no chunk in etcd")
    }

    /// Rule 2: why the build's log is not complete yet, or nil when it is.
    static func notYet(_ build: Build) -> String? {
        guard build.status.isFinal else { return "the build has not ended" }
        if let run = build.deploy, !run.status.isFinal { return "its pipeline run \(run.run) is \(run.status.rawValue)" }
        return nil
    }
}
