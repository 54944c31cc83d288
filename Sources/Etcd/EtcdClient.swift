import AsyncHTTPClient
import Logging
import NIOCore

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// A client of etcd v3, one member or several of one cluster, through etcd 3.4's JSON gateway
/// (`/v3/...`).
///
/// It is a value: copy it freely, share it between tasks. It holds no connection of its own;
/// requests go through `httpClient`. Keys are UTF-8 strings; values are bytes, with `String`
/// conveniences. Every call throws ``EtcdError``; one that could not reach etcd throws a
/// transient `.unreachable`, which the caller may retry.
///
/// With several endpoints (the client URLs of one cluster's members) a call goes to one
/// member and moves on to the next when that one cannot be reached, by the rules of
/// ``MemberState``: a call that never reached a member, or only reads, is repeated on the
/// next at once; a write whose connection broke after it was sent is not (it may have been
/// applied), and the caller's retry goes to the next member. Watches and follows go on from
/// their revision on another member (revisions are the cluster's, not a member's). Every
/// member accepts the token one of them issued (etcd replicates it); a member where it lapsed
/// refuses it, and the client authenticates again.
///
/// Each watch (and each follow) holds one HTTP/1 connection for as long as it is iterated.
/// The default ``EtcdClient/defaultHTTPClient`` allows 256 connections per host and fails
/// fast when etcd is down; `HTTPClient.shared` allows only 8 (the ninth request waits for a free one) and
/// retries a refused connection for up to 90 s, so do not use it with more than a few watches.
public struct EtcdClient: Sendable {
    /// The client URLs of the members this client talks to, in the order it tries them.
    public var endpoints: [String] { members.endpoints }
    /// The member calls go to now: the first of `endpoints` until it fails.
    public var endpoint: String { members.endpoints[members.current] }
    public let httpClient: HTTPClient
    public let logger: Logger
    /// The deadline of each unary request.
    public var requestTimeout: TimeAmount
    /// Set when the client was made with credentials: its token, shared by every copy.
    let session: EtcdSession?
    /// The members and the one in use, shared by every copy.
    let members: EtcdMembers
    /// Set when the client cannot be used as made (``checkEndpoints(_:tls:)`` or the TLS
    /// files failed): every call throws it.
    let configurationError: EtcdError?

    /// A client of `endpoint`: one URL, or the URLs of a cluster's members separated by
    /// commas, as `--etcd` takes them (``parseEndpoints(_:)``). See ``init(endpoints:httpClient:logger:requestTimeout:credentials:tls:)``.
    public init(
        endpoint: String = "http://127.0.0.1:2379",
        httpClient: HTTPClient? = nil,
        logger: Logger = Logger(label: "kiln.etcd"),
        requestTimeout: TimeAmount = .seconds(10),
        credentials: EtcdCredentials? = nil,
        tls: EtcdTLS? = nil
    ) {
        self.init(endpoints: Self.parseEndpoints(endpoint), httpClient: httpClient, logger: logger,
                  requestTimeout: requestTimeout, credentials: credentials, tls: tls)
    }

    /// A client of the members at `endpoints` (one is a cluster of one). With `credentials`,
    /// it authenticates on first use and sends the token on every call, watches and lease
    /// renewals included; when etcd says the token is invalid (it lapses after etcd's
    /// `--auth-token-ttl` without use) it authenticates again and repeats the call once. With
    /// `tls` (or `https://` endpoints) it talks TLS; by default over ``defaultHTTPClient``, or
    /// ``tlsHTTPClient(for:)`` when `tls` is given.
    ///
    /// It never throws: endpoints that break the rule of ``checkEndpoints(_:tls:)`` (none,
    /// one twice, plain HTTP off loopback) or TLS files that cannot be read make every call
    /// throw `.misconfigured`. A command checks with ``checkEndpoints(_:tls:)`` and
    /// ``tlsHTTPClient(for:)`` first, to refuse at start.
    public init(
        endpoints: [String],
        httpClient: HTTPClient? = nil,
        logger: Logger = Logger(label: "kiln.etcd"),
        requestTimeout: TimeAmount = .seconds(10),
        credentials: EtcdCredentials? = nil,
        tls: EtcdTLS? = nil
    ) {
        let endpoints = endpoints.map { url in
            var url = url
            while url.hasSuffix("/") { url.removeLast() }
            return url
        }
        let named = endpoints.joined(separator: ",")
        var configurationError: EtcdError?
        var client = httpClient ?? EtcdClient.defaultHTTPClient
        do {
            try Self.checkEndpoints(endpoints, tls: tls)
            if httpClient == nil, let tls { client = try Self.tlsHTTPClient(for: tls) }
        } catch let error as EtcdError {
            configurationError = EtcdError.misconfigured(named, error.message)
        } catch {
            configurationError = EtcdError.misconfigured(named, "\(error)")
        }
        self.members = EtcdMembers(endpoints.isEmpty ? [""] : endpoints)
        self.httpClient = client
        self.configurationError = configurationError
        self.session = credentials.map(EtcdSession.init)
        var logger = logger
        logger[metadataKey: "etcd.endpoint"] = .string(named)
        if let credentials { logger[metadataKey: "etcd.user"] = .string(credentials.user) }
        self.logger = logger
        self.requestTimeout = requestTimeout
    }

    /// The user this client authenticates as, or nil for an anonymous client.
    public var user: String? { session?.credentials.user }

    /// A process-wide HTTP client for etcd: many connections per host (each watch holds one),
    /// a 3 s connect timeout without retries (so a down etcd is reported at once and the
    /// caller's backoff applies), and no read timeout (a quiet watch may stay silent for hours).
    /// Like `HTTPClient.shared`, it is never shut down.
    public static let defaultHTTPClient: HTTPClient = HTTPClient(eventLoopGroupProvider: .singleton, configuration: defaultHTTPClientConfiguration())

    static func defaultHTTPClientConfiguration() -> HTTPClient.Configuration {
        var configuration = HTTPClient.Configuration()
        configuration.timeout = HTTPClient.Configuration.Timeout(connect: .seconds(3), read: nil)
        configuration.connectionPool = HTTPClient.Configuration.ConnectionPool(
            idleTimeout: .seconds(60),
            concurrentHTTP1ConnectionsPerHostSoftLimit: 256
        )
        configuration.connectionPool.retryConnectionEstablishment = false
        configuration.redirectConfiguration = .disallow
        configuration.decompression = .disabled
        return configuration
    }

    // MARK: kv

    /// The key, or nil if it does not exist.
    public func get(_ key: String) async throws -> KeyValue? {
        try await range(key: key, rangeEnd: nil).kvs.first
    }

    /// All keys that start with `prefix`, sorted by key (at most `limit` of them).
    public func range(prefix: String, limit: Int? = nil) async throws -> RangeResult {
        let end = Wire.prefixEnd(Array(prefix.utf8))
        return try await range(key: Array(prefix.utf8), rangeEnd: end, limit: limit)
    }

    /// The keys in [key, rangeEnd), sorted by key; only `key` if `rangeEnd` is nil.
    /// A `rangeEnd` of "\0" means every key from `key` on.
    public func range(key: String, rangeEnd: String?, limit: Int? = nil) async throws -> RangeResult {
        try await range(key: Array(key.utf8), rangeEnd: rangeEnd.map { Array($0.utf8) }, limit: limit)
    }

    func range(key: [UInt8], rangeEnd: [UInt8]?, limit: Int? = nil) async throws -> RangeResult {
        let request = Wire.RangeRequest(
            key: Wire.base64(key),
            rangeEnd: rangeEnd.map(Wire.base64),
            limit: limit.map(String.init)
        )
        return try await call("/v3/kv/range", request, as: Wire.RangeResponse.self, idempotent: true,
                              access: "read \(String(decoding: key, as: UTF8.self))\(rangeEnd == nil ? "" : "…")").result
    }

    /// Writes `value` (UTF-8) at `key`, bound to `lease` if given. Returns the new revision.
    @discardableResult
    public func put(_ key: String, _ value: String, lease: Int64? = nil) async throws -> Int64 {
        try await put(key, bytes: Array(value.utf8), lease: lease)
    }

    /// Writes `bytes` at `key`, bound to `lease` if given. Returns the new revision.
    @discardableResult
    public func put(_ key: String, bytes: [UInt8], lease: Int64? = nil) async throws -> Int64 {
        let request = Wire.PutRequest(key: Wire.base64(key), value: Wire.base64(bytes), lease: lease.map(String.init))
        return try await call("/v3/kv/put", request, as: Wire.HeaderOnly.self, access: "write \(key)").header.revision
    }

    /// Deletes `key`. Returns how many keys were deleted (0 or 1).
    @discardableResult
    public func delete(_ key: String) async throws -> Int64 {
        let request = Wire.DeleteRangeRequest(key: Wire.base64(key))
        return try await call("/v3/kv/deleterange", request, as: Wire.DeleteRangeResponse.self, access: "delete \(key)").deleted
    }

    /// Deletes every key that starts with `prefix`. Returns how many were deleted.
    @discardableResult
    public func delete(prefix: String) async throws -> Int64 {
        let request = Wire.DeleteRangeRequest(
            key: Wire.base64(prefix),
            rangeEnd: Wire.base64(Wire.prefixEnd(Array(prefix.utf8)))
        )
        return try await call("/v3/kv/deleterange", request, as: Wire.DeleteRangeResponse.self, access: "delete \(prefix)…").deleted
    }

    /// Runs a transaction.
    public func txn(_ txn: Txn) async throws -> TxnResult {
        let request = Wire.TxnRequest(
            compare: txn.compare.map(Wire.CompareRequest.init),
            success: txn.success.map(Wire.RequestOp.init),
            failure: txn.failure.map(Wire.RequestOp.init)
        )
        let response = try await call("/v3/kv/txn", request, as: Wire.TxnResponse.self, access: txn.access)
        return TxnResult(succeeded: response.succeeded, revision: response.header.revision, responses: response.responses.map(\.result))
    }

    /// The store's current revision; also the way to check that etcd answers.
    public func status() async throws -> Int64 {
        try await call("/v3/maintenance/status", Wire.Empty(), as: Wire.HeaderOnly.self, idempotent: true).header.revision
    }

    /// Discards the history before `revision` and waits until it is gone from disk. A watch
    /// or read from an earlier revision then fails with `.compacted`.
    public func compact(revision: Int64) async throws {
        _ = try await call("/v3/kv/compaction", Wire.CompactionRequest(revision: String(revision), physical: true), as: Wire.HeaderOnly.self)
    }

    // MARK: leases

    /// Grants a lease of `ttl` seconds and returns its id.
    public func grantLease(ttl: Int64) async throws -> Int64 {
        let response = try await call("/v3/lease/grant", Wire.LeaseGrantRequest(ttl: String(ttl)), as: Wire.LeaseResponse.self)
        if let error = response.error, !error.isEmpty {
            throw EtcdError.gateway(endpoint, path: "/v3/lease/grant", httpStatus: 200, grpcCode: nil, message: error)
        }
        return response.id
    }

    /// Renews the lease once and returns its remaining TTL in seconds.
    /// Throws `.leaseNotFound` if the lease expired or was revoked. `timeout`: instead of
    /// ``requestTimeout`` for each member asked.
    public func keepAliveOnce(_ lease: Int64, timeout: TimeAmount? = nil) async throws -> Int64 {
        // A streaming call: one request, one `{"result":…}` line, then the gateway ends the stream.
        let message = try await call(
            "/v3/lease/keepalive", Wire.LeaseRequest(id: String(lease)),
            as: Wire.StreamMessage<Wire.LeaseResponse>.self, idempotent: true, timeout: timeout
        )
        if let error = message.error {
            throw EtcdError.gateway(
                endpoint, path: "/v3/lease/keepalive", httpStatus: error.httpCode, grpcCode: error.grpcCode,
                message: error.message ?? "unknown error"
            )
        }
        // An unknown lease answers 200 with the ID and no TTL.
        guard let result = message.result, result.ttl > 0 else {
            throw EtcdError.leaseNotFound(endpoint, "lease \(lease) not found (expired or revoked)")
        }
        return result.ttl
    }

    /// Renews the lease every `interval` until the calling task is cancelled, then returns.
    ///
    /// Throws `.leaseNotFound` when etcd says the lease is gone, or when no renewal got
    /// through for the lease's whole TTL (etcd unreachable): from then on the caller must act
    /// as if its keys were deleted. While renewals fail, it retries every 250 ms (or
    /// `interval`, if shorter). Until the first renewal succeeds the TTL is unknown and taken
    /// to be 3 × `interval`.
    ///
    /// With several members, each renewal waits at most `interval` (at least 2 s) for one: a
    /// member that hangs (it forwards renewals to a leader that just died) must not keep the
    /// lease from reaching another member within its TTL. A lone member is waited for as any
    /// call is: there is no other to ask, and a busy machine may answer slowly.
    public func keepAlive(_ lease: Int64, every interval: Duration) async throws {
        let clock = ContinuousClock()
        var ttl = interval * 3
        var lastRenewal = clock.now
        var failing: EtcdError?
        let attemptTimeout = endpoints.count == 1 ? requestTimeout
            : min(requestTimeout, .nanoseconds(Int64(max(interval, .seconds(2)) / .nanoseconds(1))))
        while !Task.isCancelled {
            do {
                let remaining = try await keepAliveOnce(lease, timeout: attemptTimeout)
                lastRenewal = clock.now
                ttl = .seconds(remaining)
                if failing != nil {
                    logger.info("lease renewed again", metadata: ["etcd.lease": "\(lease)"])
                }
                failing = nil
            } catch let error as EtcdError where error.isTransient {
                if Task.isCancelled { return }
                if clock.now - lastRenewal >= ttl {
                    throw EtcdError.leaseNotFound(
                        endpoint, "lease \(lease) could not be renewed for its TTL of \(ttl): \(error.message)")
                }
                if failing == nil {
                    logger.warning("lease renewal failed, retrying", metadata: ["etcd.lease": "\(lease)", "error": "\(error)"])
                }
                failing = error
            } catch {
                if Task.isCancelled { return }
                throw error
            }
            do {
                try await Task.sleep(for: failing == nil ? interval : min(interval, .milliseconds(250)))
            } catch {
                return
            }
        }
    }

    /// Revokes the lease: its keys are deleted at once. Throws `.leaseNotFound` if it is already gone.
    public func revokeLease(_ lease: Int64) async throws {
        _ = try await call("/v3/lease/revoke", Wire.LeaseRequest(id: String(lease)), as: Wire.HeaderOnly.self,
                           access: "revoke lease \(lease) (which needs write permission on every key attached to it)")
    }

    /// The lease's remaining TTL in seconds, or nil if it does not exist.
    public func timeToLive(_ lease: Int64) async throws -> Int64? {
        let response = try await call("/v3/lease/timetolive", Wire.LeaseRequest(id: String(lease)), as: Wire.LeaseResponse.self, idempotent: true)
        // An unknown lease answers TTL -1.
        return response.ttl < 0 ? nil : response.ttl
    }

    // MARK: watch

    /// Follows every key that starts with `prefix`: first all of them with the revision they
    /// were read at (a `.reset`), then their changes; after a failure or a compaction the
    /// whole prefix again (another `.reset`). Use it rather than a read and a watch of your
    /// own. See ``EtcdFollow``.
    public func follow(prefix: String) -> EtcdFollow {
        EtcdFollow(client: self, prefix: prefix)
    }

    /// Watches every key that starts with `prefix`, from `fromRevision` (inclusive) or from now.
    /// See ``EtcdWatch`` for how it survives restarts and compaction.
    public func watch(prefix: String, fromRevision: Int64? = nil, prevKV: Bool = false) -> EtcdWatch {
        let key = Array(prefix.utf8)
        return EtcdWatch(client: self, key: key, rangeEnd: Wire.prefixEnd(key), fromRevision: fromRevision, prevKV: prevKV)
    }

    /// Watches one key, from `fromRevision` (inclusive) or from now.
    public func watch(key: String, fromRevision: Int64? = nil, prevKV: Bool = false) -> EtcdWatch {
        EtcdWatch(client: self, key: Array(key.utf8), rangeEnd: nil, fromRevision: fromRevision, prevKV: prevKV)
    }

    // MARK: transport

    func makeRequest(_ path: String, _ body: some Encodable, token: String?, to endpoint: String) throws -> HTTPClientRequest {
        var request = HTTPClientRequest(url: endpoint + path)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        // etcd's gateway takes the raw token, without "Bearer".
        if let token, !token.isEmpty { request.headers.add(name: "Authorization", value: token) }
        let json = try JSONEncoder().encode(body)
        request.body = .bytes(ByteBuffer(bytes: json))
        return request
    }

    /// The token to send (nil: anonymous), a new one if `stale` is the one etcd refused.
    func token(replacing stale: String?) async throws -> String? {
        guard let session else { return nil }
        let client = self
        return try await session.token(replacing: stale) { try await client.authenticate(session.credentials) }
    }

    /// One unary call: POST the JSON, read the whole answer, decode it or its error. With
    /// credentials, a refused token is renewed and the call repeated once. `access` says
    /// what the call does to which keys ("write /kiln/x"), for a refusal's message.
    /// `idempotent`: the call only reads, so it may be repeated on another member after a
    /// connection that broke (``MemberState``). `member`: this member only, no other.
    /// `timeout`: instead of ``requestTimeout``.
    func call<Response: Decodable>(
        _ path: String, _ body: some Encodable, as type: Response.Type, idempotent: Bool = false,
        member: String? = nil, timeout: TimeAmount? = nil, access: @autoclosure () -> String = ""
    ) async throws -> Response {
        if let configurationError { throw configurationError }
        var token = try await token(replacing: nil)
        var renewed = false
        while true {
            let (status, bytes, endpoint) = try await send(path, body, token: token, idempotent: idempotent, member: member, timeout: timeout)
            if status == 200 {
                do {
                    return try Wire.decoder().decode(Response.self, from: bytes)
                } catch {
                    throw EtcdError.badResponse(endpoint, "\(path): \(error); body: \(String(buffer: bytes).prefix(500))")
                }
            }
            if session != nil, !renewed, Self.needsNewToken(Self.errorMessage(bytes)) {
                renewed = true
                token = try await self.token(replacing: token ?? "")
                continue
            }
            throw gatewayError(path, status: status, body: bytes, access: access(), endpoint: endpoint)
        }
    }

    /// Sends one request and reads its whole answer: to `member` alone if given, else to the
    /// members in the order of ``MemberState``'s rules. Returns the answer and the member
    /// that gave it.
    func send(_ path: String, _ body: some Encodable, token: String?, idempotent: Bool = false,
              member pinned: String? = nil, timeout: TimeAmount? = nil) async throws -> (UInt, ByteBuffer, String) {
        let timeout = timeout ?? requestTimeout
        if let pinned {
            let request = try makeRequest(path, body, token: token, to: pinned)
            do {
                let response = try await httpClient.execute(request, timeout: timeout, logger: logger)
                return (response.status.code, try await response.body.collect(upTo: 256 << 20), pinned)
            } catch {
                try Task.checkCancellation()
                throw EtcdError.unreachable(pinned, "\(path): \(error)")
            }
        }
        let deadline = ContinuousClock.now + .nanoseconds(timeout.nanoseconds)
        var backoff = Backoff()
        var failures: [String] = []
        var tried = Set<Int>()
        while true {
            tried = []
            /// The last answer of a member that could not serve the call now (no leader, an
            /// election), handed to the caller if no member serves it.
            var unavailable: (UInt, ByteBuffer, String)?
            var stopped = false
            while let member = members.next(excluding: tried) {
                tried.insert(member)
                let endpoint = members.endpoints[member]
                let request = try makeRequest(path, body, token: token, to: endpoint)
                let failure: CallFailure
                do {
                    let response = try await httpClient.execute(request, timeout: timeout, logger: logger)
                    let bytes = try await response.body.collect(upTo: 256 << 20)
                    let decoded = try? Wire.decoder().decode(Wire.ErrorBody.self, from: bytes)
                    guard let refused = CallFailure.of(status: response.status.code, grpcCode: decoded?.code, message: Self.errorMessage(bytes)) else {
                        return (response.status.code, bytes, endpoint)
                    }
                    unavailable = (response.status.code, bytes, endpoint)
                    failures.append("\(endpoint): \(Self.errorMessage(bytes))")
                    failure = refused
                } catch {
                    try Task.checkCancellation()
                    failures.append("\(endpoint): \(error)")
                    failure = CallFailure.of(error)
                }
                members.failed(member)
                let repeats = MemberState.retries(failure, idempotent: idempotent)
                let goesOn = repeats && members.next(excluding: tried) != nil
                if members.endpoints.count > 1 {
                    logger.warning("etcd member \(endpoint) failed \(path)\(goesOn ? "; trying the next member" : "")",
                                   metadata: ["error": "\(failures.last ?? "")"])
                }
                if !repeats { stopped = true }
                guard goesOn else { break }
            }
            // Rule 6: members answered but none could serve a call that may be repeated (a
            // leader is being elected): again after a wait, while the call's time lasts.
            if let answer = unavailable {
                let wait = backoff.failed()
                if stopped || ContinuousClock.now + wait >= deadline { return answer }
                try await Task.sleep(for: wait)
                continue
            }
            break
        }
        let named = tried.count == 1 ? members.endpoints[tried.first!] : tried.sorted().map { members.endpoints[$0] }.joined(separator: ",")
        throw EtcdError.unreachable(named, "\(path): \(failures.suffix(members.endpoints.count).joined(separator: "; "))")
    }

    /// etcd's answer when the token sent is no good (lapsed, or from before etcd restarted),
    /// none was sent (authentication was turned on since), or the auth store changed under it.
    static func needsNewToken(_ message: String) -> Bool {
        message.contains("invalid auth token") || message.contains("user name is empty")
            || message.contains("revision of auth store is old")
    }

    /// The message of a gateway's error answer, as etcd wrote it.
    static func errorMessage(_ body: ByteBuffer) -> String {
        let decoded = try? Wire.decoder().decode(Wire.ErrorBody.self, from: body)
        return decoded?.message ?? decoded?.error ?? String(String(buffer: body).prefix(500))
    }

    func gatewayError(_ path: String, status: UInt, body: ByteBuffer, access: String = "", endpoint: String? = nil) -> EtcdError {
        let decoded = try? Wire.decoder().decode(Wire.ErrorBody.self, from: body)
        let message = Self.errorMessage(body)
        let endpoint = endpoint ?? self.endpoint
        return authError(message, httpStatus: Int(status), grpcCode: decoded?.code, access: access, endpoint: endpoint)
            ?? EtcdError.gateway(endpoint, path: path, httpStatus: Int(status), grpcCode: decoded?.code, message: message)
    }

    /// An authentication or permission refusal in words that say what to do, or nil for any
    /// other error.
    func authError(_ message: String, httpStatus: Int?, grpcCode: Int?, access: String, endpoint: String? = nil) -> EtcdError? {
        let endpoint = endpoint ?? self.endpoint
        if message.contains("permission denied") {
            let what = access.isEmpty ? "do this" : access
            return EtcdError.permissionDenied(endpoint, "etcd user '\(user ?? "(anonymous)")' may not \(what) (permission denied): its role does not cover the key; see docs/etcd-auth.md")
        }
        if message.contains("user name is empty") {
            return EtcdError.unauthenticated(endpoint, "etcd requires authentication: pass --etcd-credentials FILE (a user:password file of mode 0600)", httpStatus: httpStatus, grpcCode: grpcCode)
        }
        if message.contains("invalid auth token") || message.contains("revision of auth store is old") {
            return EtcdError.unauthenticated(endpoint, "etcd refused the token of user '\(user ?? "(anonymous)")' even after authenticating again: \(message)", httpStatus: httpStatus, grpcCode: grpcCode)
        }
        return nil
    }
}

extension JSONDecoder {
    func decode<T: Decodable>(_ type: T.Type, from buffer: ByteBuffer) throws -> T {
        try decode(type, from: Data(buffer.readableBytesView))
    }
}
