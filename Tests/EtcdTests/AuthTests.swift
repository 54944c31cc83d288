@testable import Etcd
import Foundation
import KilnTestSupport
import LocalFarm
import Testing

/// The client against a real etcd with authentication on: refusals that say what to do,
/// tokens renewed transparently (kv, watch, after a restart), one authentication for many
/// callers, and TLS with a CA and client certificates made here.
@Suite("etcd authentication", .serialized)
struct AuthTests {
    @Test func anAnonymousClientIsRefusedAndToldWhatToPass() async throws {
        try await withAuthEtcd { server, _, _ in
            let anonymous = EtcdClient(endpoint: server.endpoint)
            let error = await #expect(throws: EtcdError.self) { try await anonymous.put("/a/x", "1") }
            #expect(error == .unauthenticated)
            #expect(error?.message.contains("pass --etcd-credentials FILE") == true, "\(error?.description ?? "")")
            let watchError = await #expect(throws: EtcdError.self) {
                for try await _ in anonymous.watch(prefix: "/a/") { break }
            }
            #expect(watchError == .unauthenticated, "a watch is refused as plainly: \(watchError?.description ?? "")")
        }
    }

    @Test func aRefusalNamesTheKeyAndTheUser() async throws {
        try await withAuthEtcd { _, _, user in
            let u = try await user("u1", [.prefix("/a/", .readWrite)])
            try await u.put("/a/x", "1")
            let error = await #expect(throws: EtcdError.self) { try await u.put("/b/x", "1") }
            #expect(error == .permissionDenied)
            #expect(error?.message.contains("'u1' may not write /b/x") == true, "\(error?.description ?? "")")
            let txn = await #expect(throws: EtcdError.self) {
                try await u.txn(Txn(compare: [.createRevision("/b/guard", .equal, 0)], success: [.put("/a/y", "1")]))
            }
            #expect(txn?.message.contains("read /b/guard") == true, "a compared key needs read permission: \(txn?.description ?? "")")
            let watch = await #expect(throws: EtcdError.self) { for try await _ in u.watch(prefix: "/b/") { break } }
            #expect(watch == .permissionDenied && watch?.message.contains("/b/") == true, "\(watch?.description ?? "")")
        }
    }

    @Test func aWrongPasswordSaysToCheckTheFile() async throws {
        try await withAuthEtcd { server, _, user in
            _ = try await user("u1", [])
            let wrong = EtcdClient(endpoint: server.endpoint, credentials: EtcdCredentials(user: "u1", password: "not-it"))
            let error = await #expect(throws: EtcdError.self) { try await wrong.get("/a/x") }
            #expect(error == .unauthenticated)
            #expect(error?.message.contains("--etcd-credentials") == true, "\(error?.description ?? "")")
            #expect(error?.message.contains("not-it") == false, "never the password")
        }
    }

    @Test func aLapsedTokenIsRenewedForKVCallsOnceForAllCallers() async throws {
        try await withAuthEtcd(tokenTTL: 1) { _, _, user in
            let u = try await user("u1", [.prefix("/a/", .readWrite)])
            try await u.put("/a/x", "1")
            #expect(u.session?.authentications == 1)
            // Simple tokens lapse after --auth-token-ttl without use: only the clock can make that happen.
            try await Task.sleep(for: .seconds(2.5))
            let copies = Array(repeating: u, count: 20)
            try await withThrowingTaskGroup(of: Void.self) { group in
                for (i, copy) in copies.enumerated() { group.addTask { try await copy.put("/a/\(i)", "v") } }
                try await group.waitForAll()
            }
            #expect(u.session?.authentications == 2, "20 copies refused at once authenticate once")
            #expect(try await u.range(prefix: "/a/").kvs.count == 21)
        }
    }

    @Test func aLapsedTokenIsRenewedForAWatchAndAFollow() async throws {
        try await withAuthEtcd(tokenTTL: 1) { _, root, user in
            let u = try await user("u1", [.prefix("/a/", .readWrite)])
            try await u.put("/a/x", "1")
            try await Task.sleep(for: .seconds(2.5))  // the token lapses without use
            let start = try await root.status() + 1
            try await consuming(u.watch(prefix: "/a/", fromRevision: start)) { updates in
                try await root.put("/a/w", "2")
                #expect(try await updates.events(1).map(\.kv.key) == ["/a/w"])
            }
            #expect(u.session?.authentications == 2)
            try await Task.sleep(for: .seconds(2.5))
            try await consuming(u.follow(prefix: "/a/")) { updates in
                guard case .reset(let kvs, _) = try await updates.next() else {
                    Issue.record("a follow starts with the whole prefix")
                    return
                }
                #expect(kvs.count == 2, "the read after the lapse got through")
                try await root.put("/a/f", "3")
                #expect(try await updates.events(1).map(\.kv.key) == ["/a/f"])
            }
        }
    }

    @Test func aWatchOpenAcrossARestartGoesOn() async throws {
        try await withAuthEtcd { server, root, user in
            let u = try await user("u1", [.prefix("/a/", .read)])
            let start = try await root.status() + 1
            try await consuming(u.watch(prefix: "/a/", fromRevision: start)) { updates in
                try await root.put("/a/1", "x")
                #expect(try await updates.events(1).map(\.kv.key) == ["/a/1"])
                // The watch reconnects with its token (etcd replays authentications from its
                // log, so a token from before the restart may still be good, or be renewed).
                try await server.restart()
                try await root.put("/a/2", "x")
                #expect(try await updates.events(1).map(\.kv.key) == ["/a/2"])
            }
        }
    }

    @Test func leasesWorkWithAToken() async throws {
        try await withAuthEtcd { _, _, user in
            let u = try await user("u1", [EtcdPermission(.readWrite, key: "/a/reg")])
            let lease = try await u.grantLease(ttl: 10)
            try await u.put("/a/reg", "me", lease: lease)
            #expect(try await u.keepAliveOnce(lease) > 0)
            try await u.revokeLease(lease)
            #expect(try await u.get("/a/reg") == nil)
        }
    }

    @Test func tlsWithACAAndAClientCertificate() async throws {
        let dir = try TempDir("etcd-tls")
        let pki = try TestCA(dir.url)
        let server = try await EtcdServer.start(
            dataDir: dir.path("data"),
            tls: .init(certificateFile: pki.serverCertificate, keyFile: pki.serverKey, caFile: pki.ca, clientCertificateAuth: true))
        defer { server.kill() }
        #expect(server.endpoint.hasPrefix("https://127.0.0.1:"))
        let tls = EtcdTLS(caFile: pki.ca, certificateFile: pki.clientCertificate, keyFile: pki.clientKey)
        let client = EtcdClient(endpoint: server.endpoint, tls: tls)
        try await client.put("/t/x", "over TLS")
        #expect(try await client.get("/t/x")?.string == "over TLS")
        try await consuming(client.watch(prefix: "/t/", fromRevision: try await client.status() + 1)) { updates in
            try await client.put("/t/y", "1")
            #expect(try await updates.events(1).map(\.kv.key) == ["/t/y"])
        }

        let noClientCertificate = EtcdClient(endpoint: server.endpoint, tls: EtcdTLS(caFile: pki.ca))
        await #expect(throws: EtcdError.self, "etcd wants a client certificate") { try await noClientCertificate.get("/t/x") }
        let otherCA = EtcdClient(endpoint: server.endpoint, tls: EtcdTLS(caFile: pki.otherCA, certificateFile: pki.clientCertificate, keyFile: pki.clientKey))
        await #expect(throws: EtcdError.self, "a server certificate from another CA is not trusted") { try await otherCA.get("/t/x") }
        let plain = EtcdClient(endpoint: server.endpoint.replacingOccurrences(of: "https://", with: "http://"))
        await #expect(throws: EtcdError.self, "plain HTTP to a TLS port fails") { try await plain.get("/t/x") }
    }
}

/// etcd with authentication on (root with the root role, made through the JSON gateway),
/// `--auth-token-ttl` of `tokenTTL` seconds if given. `body` gets the server, a root client,
/// and a maker of a user with a role of the same name holding exactly the permissions given.
func withAuthEtcd(
    tokenTTL: Int? = nil,
    _ body: @escaping @Sendable (EtcdServer, EtcdClient, @escaping @Sendable (String, [EtcdPermission]) async throws -> EtcdClient) async throws -> Void
) async throws {
    let dir = try TempDir("etcd-auth")
    let server = try await EtcdServer.start(dataDir: dir.path("data"), arguments: tokenTTL.map { ["--auth-token-ttl", String($0)] } ?? [])
    defer {
        server.kill()
        withExtendedLifetime(dir) {}
    }
    let rootCredentials = EtcdCredentials(user: "root", password: "root-\(UUID().uuidString)")
    let setup = EtcdClient(endpoint: server.endpoint)
    try await setup.addUser("root", password: rootCredentials.password)
    try await setup.grantRole("root", toUser: "root")
    try await setup.enableAuthentication()
    let root = EtcdClient(endpoint: server.endpoint, credentials: rootCredentials)
    let makeUser: @Sendable (String, [EtcdPermission]) async throws -> EtcdClient = { name, permissions in
        let password = "pw-\(UUID().uuidString)"
        try await root.ensureRole(name, permissions: permissions)
        try await root.addUser(name, password: password)
        try await root.grantRole(name, toUser: name)
        return EtcdClient(endpoint: server.endpoint, credentials: EtcdCredentials(user: name, password: password))
    }
    try await withTimeout(.seconds(60)) { try await body(server, root, makeUser) }
}
