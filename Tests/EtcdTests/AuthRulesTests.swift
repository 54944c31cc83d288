@testable import Etcd
import Testing

/// The pure parts of authentication and TLS: the token's bookkeeping, the endpoint rule,
/// permission changes, what a refusal names.
@Suite("etcd auth rules")
struct AuthRulesTests {
    @Test func firstCallAuthenticatesAndOthersJoin() {
        var state = TokenState()
        #expect(state.acquire(replacing: nil) == .authenticate)
        #expect(state.acquire(replacing: nil) == .join, "a second caller waits for the same authentication")
        state.finished("t1")
        #expect(state.acquire(replacing: nil) == .use("t1"))
    }

    @Test func aStaleTokenIsRenewedOnceForEveryoneWhoHeldIt() {
        var state = TokenState()
        _ = state.acquire(replacing: nil)
        state.finished("t1")
        #expect(state.acquire(replacing: "t1") == .authenticate)
        #expect(state.acquire(replacing: "t1") == .join, "a second caller refused with t1 joins the renewal")
        state.finished("t2")
        #expect(state.acquire(replacing: "t1") == .use("t2"), "one refused with t1 after the renewal gets t2 without authenticating")
        #expect(state.authentications == 0, "the counter is the session's to keep")
    }

    @Test func aFailedAuthenticationLetsTheNextCallerTryAgain() {
        var state = TokenState()
        _ = state.acquire(replacing: nil)
        state.finished(nil)
        #expect(state.acquire(replacing: nil) == .authenticate)
    }

    @Test func authenticationOffIsTheEmptyToken() {
        var state = TokenState()
        _ = state.acquire(replacing: nil)
        state.finished("")
        #expect(state.acquire(replacing: nil) == .use(""))
        // etcd turned authentication on since: "user name is empty" renews.
        #expect(state.acquire(replacing: "") == .authenticate)
    }

    @Test func plainHTTPOnlyOnLoopback() throws {
        for ok in ["http://127.0.0.1:2379", "http://127.1.2.3:2379/", "http://localhost:2379", "http://[::1]:2379", "https://10.0.0.5:2379", "https://etcd.example:2379"] {
            #expect(throws: Never.self, "\(ok)") { try EtcdClient.checkEndpoint(ok, tls: nil) }
        }
        for bad in ["http://10.0.0.5:2379", "http://etcd.example:2379", "http://127.0.0.1.example:2379", "http://0.0.0.0:2379", "http://[fe80::1]:2379"] {
            let error = #expect(throws: EtcdError.self, "\(bad)") { try EtcdClient.checkEndpoint(bad, tls: nil) }
            #expect(error == .misconfigured)
            #expect(error?.message.contains("https://") == true, "says what to use instead: \(error?.message ?? "")")
        }
        for notURL in ["127.0.0.1:2379", "ftp://127.0.0.1", "http://", "http://user:pw@127.0.0.1:2379"] {
            #expect(throws: EtcdError.self, "\(notURL)") { try EtcdClient.checkEndpoint(notURL, tls: nil) }
        }
    }

    @Test func tlsFilesNeedHTTPSAndACertificateNeedsItsKey() {
        let http = #expect(throws: EtcdError.self) { try EtcdClient.checkEndpoint("http://127.0.0.1:2379", tls: EtcdTLS(caFile: "/ca.pem")) }
        #expect(http?.message.contains("https://") == true)
        let half = #expect(throws: EtcdError.self) { try EtcdClient.checkEndpoint("https://127.0.0.1:2379", tls: EtcdTLS(certificateFile: "/c.pem")) }
        #expect(half?.message.contains("--etcd-key") == true)
        #expect(throws: Never.self) { try EtcdClient.checkEndpoint("https://127.0.0.1:2379", tls: EtcdTLS(caFile: "/ca.pem", certificateFile: "/c.pem", keyFile: "/k.pem")) }
    }

    @Test func unreadableTLSFilesAreMisconfiguredAndEveryCallSaysSo() async throws {
        let error = #expect(throws: EtcdError.self) { try EtcdClient.tlsHTTPClient(for: EtcdTLS(caFile: "/nonexistent/ca.pem")) }
        #expect(error == .misconfigured)
        #expect(error?.message.contains("/nonexistent/ca.pem") == true)
        let client = EtcdClient(endpoint: "http://10.0.0.5:2379")
        let refused = await #expect(throws: EtcdError.self) { try await client.get("/k") }
        #expect(refused == .misconfigured, "refused before any traffic leaves the machine")
    }

    @Test func permissionsOverAPrefix() {
        let p = EtcdPermission.prefix("/kiln/tasks/agent-1/", .readWrite)
        #expect(p.rangeEnd == "/kiln/tasks/agent-10")
        #expect(p.isPrefix)
        #expect(p.etcdctlArguments == "readwrite /kiln/tasks/agent-1/ --prefix=true")
        #expect(EtcdPermission(.read, key: "/kiln/leader").etcdctlArguments == "read /kiln/leader")
        #expect(!EtcdPermission(.read, key: "/kiln/leader").isPrefix)
    }

    @Test func roleChangesGrantWhatIsMissingAndRevokeWhatIsNotWanted() {
        let keep = EtcdPermission.prefix("/a/", .read)
        let widen = EtcdPermission.prefix("/b/", .read)
        let drop = EtcdPermission(.write, key: "/c")
        let add = EtcdPermission(.readWrite, key: "/d")
        let wanted = [keep, EtcdPermission.prefix("/b/", .readWrite), add]
        let (grant, revoke) = EtcdPermission.changes(from: [keep, widen, drop], to: wanted)
        #expect(grant == [EtcdPermission.prefix("/b/", .readWrite), add], "a new kind for the same range is granted again, not revoked")
        #expect(revoke == [drop])
        let none = EtcdPermission.changes(from: wanted, to: wanted)
        #expect(none.grant.isEmpty && none.revoke.isEmpty, "applying a role twice changes nothing")
    }

    @Test func aRefusedTransactionNamesItsKeys() {
        let txn = Txn(compare: [.createRevision("/kiln/tasks/a/1", .equal, 5)],
                      success: [.put("/kiln/builds/1", "x"), .delete("/kiln/tasks/a/1")], failure: [.get("/kiln/builds/1")])
        #expect(txn.access == "run a transaction that needs to read /kiln/tasks/a/1, /kiln/builds/1 and write /kiln/builds/1, /kiln/tasks/a/1")
    }

    @Test func whichRefusalsRenewTheToken() {
        #expect(EtcdClient.needsNewToken("etcdserver: invalid auth token"))
        #expect(EtcdClient.needsNewToken("etcdserver: user name is empty"))
        #expect(EtcdClient.needsNewToken("etcdserver: revision of auth store is old"))
        #expect(!EtcdClient.needsNewToken("etcdserver: permission denied"))
        #expect(!EtcdClient.needsNewToken("etcdserver: authentication failed, invalid user ID or password"))
    }

    @Test func credentialsNeverShowThePassword() {
        let c = EtcdCredentials(user: "kiln-agent.a", password: "s3cret")
        #expect("\(c)" == "kiln-agent.a:***")
        #expect(!String(reflecting: c).contains("s3cret"))
    }
}
