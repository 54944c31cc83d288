import AsyncHTTPClient
import Foundation
import KilnCore
import NIOCore
import NIOSSL
import Plugins
import Synchronization

/// One HTTP client per cell reached over TLS, made from the cell's credential by the backend's
/// `make` (Kubernetes: `KubernetesDeployer.makeClient`; local cells behind a TLS proxy:
/// `LocalDeployer.makeClient`).
///
/// A client is kept while its cell's credential stays the same, and replaced when it
/// changes (a rotated token, certificate or CA); the old one is shut down once no call still
/// uses it. Callers pair every `acquire` with one `release`. Every client left is shut down
/// when the cache goes away.
final class CellClients: Sendable {
    private struct Slot {
        var credential: CellCredential
        var client: HTTPClient
    }

    private struct State {
        var current: [String: Slot] = [:]
        /// Calls under way per client.
        var users: [ObjectIdentifier: Int] = [:]
        /// Replaced clients that calls still use.
        var retired: [ObjectIdentifier: HTTPClient] = [:]
    }

    private let state = Mutex(State())
    private let make: @Sendable (_ cell: String, _ credential: CellCredential) throws -> HTTPClient

    init(make: @escaping @Sendable (_ cell: String, _ credential: CellCredential) throws -> HTTPClient) {
        self.make = make
    }

    deinit {
        let clients = state.withLock { Array($0.current.values.map(\.client)) + Array($0.retired.values) }
        // No caller is left to await a shutdown here; the client keeps itself alive until
        // its connections are closed.
        for client in clients { _ = client.shutdown() as EventLoopFuture<Void> }
    }

    /// The client for `cell` with `credential`, made (or remade) when needed. Throws what
    /// `make` throws (a `KilnError` naming the cell when the credential's PEM cannot be read).
    func acquire(cell: String, credential: CellCredential) async throws -> HTTPClient {
        let reused: HTTPClient? = state.withLock { s in
            guard let slot = s.current[cell], slot.credential == credential else { return nil }
            s.users[ObjectIdentifier(slot.client), default: 0] += 1
            return slot.client
        }
        if let reused { return reused }
        let fresh = try make(cell, credential)
        let (client, idle): (HTTPClient, [HTTPClient]) = state.withLock { s in
            // Another call may have made one for the same credential meanwhile: use it.
            if let slot = s.current[cell], slot.credential == credential {
                s.users[ObjectIdentifier(slot.client), default: 0] += 1
                return (slot.client, [fresh])
            }
            var idle: [HTTPClient] = []
            if let old = s.current[cell]?.client {
                if s.users[ObjectIdentifier(old), default: 0] == 0 { idle.append(old) } else { s.retired[ObjectIdentifier(old)] = old }
            }
            s.current[cell] = Slot(credential: credential, client: fresh)
            s.users[ObjectIdentifier(fresh), default: 0] += 1
            return (fresh, idle)
        }
        for c in idle { try? await c.shutdown() }
        return client
    }

    /// Ends one call's use of `client`; a replaced client is shut down after its last call.
    func release(_ client: HTTPClient) async {
        let id = ObjectIdentifier(client)
        let done: HTTPClient? = state.withLock { s in
            let left = s.users[id, default: 1] - 1
            s.users[id] = left == 0 ? nil : left
            guard left == 0 else { return nil }
            return s.retired.removeValue(forKey: id)
        }
        if let done { try? await done.shutdown() }
    }

    /// Clients in use or kept (for tests: a changed credential replaces the client).
    var count: Int { state.withLock { $0.current.count + $0.retired.count } }
}

extension KubernetesDeployer {
    /// The client of one Kubernetes cell: the cluster's CA as the only trust root (the
    /// system's store is not consulted, so no public CA can vouch for a server pretending to
    /// be the cluster), the client certificate when the credential has one, no redirects
    /// followed (a redirect would carry the bearer token elsewhere).
    static func makeClient(cell: String, credential: CellCredential) throws -> HTTPClient {
        func unreadable(_ field: String, _ error: any Error) -> KilnError {
            KilnError.invalid("cell \(cell): the \(field) of its credential cannot be read (\(error)): set the credential again with `kiln cell credential set \(cell) …`")
        }
        var tls = TLSConfiguration.makeClientConfiguration()
        let authorities: [NIOSSLCertificate]
        do { authorities = try NIOSSLCertificate.fromPEMBytes(Array(credential.certificateAuthority.utf8)) } catch { throw unreadable("certificateAuthority", error) }
        guard !authorities.isEmpty else {
            throw KilnError.invalid("cell \(cell): the certificateAuthority of its credential holds no certificate: set the cluster's CA with `kiln cell credential set \(cell) …`")
        }
        tls.trustRoots = .certificates(authorities)
        tls.certificateVerification = .fullVerification
        if let certificate = credential.clientCertificate, let key = credential.clientKey {
            do {
                tls.certificateChain = try NIOSSLCertificate.fromPEMBytes(Array(certificate.utf8)).map { .certificate($0) }
            } catch { throw unreadable("clientCertificate", error) }
            do {
                tls.privateKey = .privateKey(try NIOSSLPrivateKey(bytes: Array(key.utf8), format: .pem))
            } catch { throw unreadable("clientKey", error) }
        }
        var configuration = HTTPClient.Configuration(
            tlsConfiguration: tls,
            redirectConfiguration: .disallow,
            timeout: .init(connect: .seconds(5), read: nil),  // each request has its own time limit
            connectionPool: .init(idleTimeout: .seconds(60)))
        configuration.decompression = .disabled
        return HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: configuration)
    }
}

extension CellClients {
    /// The sealed credential of `cell`, read through the pipeline's secrets; the errors say
    /// what to do. `kind` names the cells that need one ("https cells", "Kubernetes cells"),
    /// `missing` is the refusal when none was set.
    static func credential(of cell: Cell, from secrets: (any PipelineSecrets)?, kind: String, missing: String) async throws -> CellCredential {
        guard let secrets else {
            throw KilnError.unavailable("cell \(cell.name): no cell credentials can be read here: only a scheduler with the farm's secrets key (--secrets-key-file) reaches \(kind)")
        }
        let found: CellCredential?
        do {
            found = try await secrets.cellCredential(cell.name)
        } catch is CancellationError {
            throw CancellationError()
        } catch {
            throw KilnError.unavailable("cell \(cell.name): its credential could not be read: \((error as? KilnError)?.message ?? "\(error)")")
        }
        guard let found else { throw KilnError.invalid(missing) }
        return found
    }
}
