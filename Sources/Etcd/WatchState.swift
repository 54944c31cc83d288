/// The bookkeeping of one watch, without I/O: where to resume, when to resync, how long to
/// back off. The iterator of ``EtcdWatch`` feeds it what the gateway sends and carries out
/// the action it returns.
struct WatchState {
    enum Action: Equatable {
        /// Nothing for the consumer; read on.
        case none
        /// Give this to the consumer.
        case yield(WatchUpdate)
        /// The start revision was compacted: close the connection, read the range, yield
        /// `.reset`, then watch from after the read's revision.
        case resync
        /// The stream failed (etcd is going away): close it and reconnect after a backoff.
        case reconnect
        /// The watch cannot go on.
        case fail(String)
    }

    /// The revision the next connection starts from; nil until the first watch is created
    /// (then it starts from "now").
    private(set) var nextRevision: Int64?
    /// The range must be read (and `.reset` yielded) before watching again.
    private(set) var needsReset = false
    private var backoff = Backoff()
    /// Failed connections since the last successful one.
    var failures: Int { backoff.failures }

    init(fromRevision: Int64?) {
        nextRevision = fromRevision
    }

    /// A message of the stream, the `result` part of `{"result":…}`.
    mutating func receive(_ response: Wire.WatchResponse) -> Action {
        if response.canceled {
            if response.compactRevision > 0 {
                needsReset = true
                return .resync
            }
            return .fail(response.cancelReason ?? "canceled by etcd")
        }
        if response.created {
            if nextRevision == nil, let header = response.header {
                nextRevision = header.revision + 1
            }
            backoff.succeeded()
            return .none
        }
        if response.events.isEmpty {
            // A progress notification: every change up to the header's revision was sent.
            if let header = response.header, let next = nextRevision, header.revision >= next {
                nextRevision = header.revision + 1
            }
            return .none
        }
        // Never hand out an event twice, even if a resumed stream repeated one.
        let fresh = response.events.filter { event in nextRevision.map { event.event.kv.modRevision >= $0 } ?? true }
        guard let last = fresh.last else { return .none }
        // The last event's revision, not the header's: while a watcher catches up on history
        // the header carries the store's current revision, ahead of the events sent so far.
        let revision = last.event.kv.modRevision
        nextRevision = revision + 1
        return .yield(.events(fresh.map(\.event), revision: revision))
    }

    /// An `{"error":…}` message of the stream.
    mutating func receive(error: Wire.StreamError) -> Action {
        switch error.grpcCode {
        case 3, 7, 16:  // invalid argument, permission denied, unauthenticated: retrying won't help
            return .fail(error.message ?? "error \(error.grpcCode ?? 0)")
        default:  // 14 "transport is closing" when etcd stops, and anything else: try again
            return .reconnect
        }
    }

    /// The connection ended or could not be made: how long to wait before the next attempt.
    mutating func disconnected() -> Duration {
        backoff.failed()
    }

    /// The range was read at `revision` and yielded as a reset.
    mutating func didReset(revision: Int64) {
        needsReset = false
        nextRevision = revision + 1
    }
}

/// Splits a byte stream into lines; a line may arrive in several chunks, and a chunk may
/// hold several lines.
struct LineSplitter {
    private var buffer: [UInt8] = []
    private var start = 0
    /// Where the search for the next newline resumes (all bytes before it hold none).
    private var scanned = 0

    mutating func append(_ bytes: some Sequence<UInt8>) {
        if start > 0 && start * 2 >= buffer.count {
            buffer.removeSubrange(0..<start)
            scanned -= start
            start = 0
        }
        buffer.append(contentsOf: bytes)
    }

    /// The next complete line without its newline (blank lines are skipped), or nil.
    mutating func nextLine() -> ArraySlice<UInt8>? {
        while let newline = buffer[scanned...].firstIndex(of: UInt8(ascii: "\n")) {
            let line = buffer[start..<newline]
            start = newline + 1
            scanned = start
            if !line.allSatisfy(Self.isSpace) { return line }
        }
        scanned = buffer.count
        return nil
    }

    /// At the end of the stream: the last line if it had no newline, or nil.
    mutating func remainder() -> ArraySlice<UInt8>? {
        let rest = buffer[start...]
        buffer = []
        start = 0
        scanned = 0
        return rest.allSatisfy(Self.isSpace) ? nil : rest
    }

    private static func isSpace(_ byte: UInt8) -> Bool {
        byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\r") || byte == UInt8(ascii: "\t") || byte == UInt8(ascii: "\n")
    }
}
