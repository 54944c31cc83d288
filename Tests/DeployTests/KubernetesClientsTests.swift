@testable import Deploy
import Foundation
import KilnCore
import Testing

/// The HTTP clients of the Kubernetes cells: one per cell, kept while its credential stays
/// the same, replaced (and the old one closed after its last call) when it changes.
@Suite struct KubernetesClientsTests {
    @Test func aClientIsKeptPerCredentialAndReplacedWhenItChanges() async throws {
        let ca = try TestCA(name: "cluster CA").pem
        let clients = CellClients(make: KubernetesDeployer.makeClient)
        let first = try await clients.acquire(cell: "k1", credential: CellCredential(token: "token-one-1", certificateAuthority: ca))
        let again = try await clients.acquire(cell: "k1", credential: CellCredential(token: "token-one-1", certificateAuthority: ca))
        #expect(first === again)
        let other = try await clients.acquire(cell: "k2", credential: CellCredential(token: "token-one-1", certificateAuthority: ca))
        #expect(other !== first, "one client per cell")
        #expect(clients.count == 2)

        // Rotated while two calls still use the first: a new client; the old one is kept
        // until both are done.
        let rotated = try await clients.acquire(cell: "k1", credential: CellCredential(token: "token-two-2", certificateAuthority: ca))
        #expect(rotated !== first)
        #expect(clients.count == 3)
        await clients.release(first)
        #expect(clients.count == 3)
        await clients.release(again)
        #expect(clients.count == 2, "the replaced client went with its last call")
        await clients.release(rotated)
        await clients.release(other)
        #expect(clients.count == 2, "current clients stay for the next call")
    }

    @Test func anUnreadableCredentialNamesTheCellAndTheField() async throws {
        let clients = CellClients(make: KubernetesDeployer.makeClient)
        let noCA = await #expect(throws: KilnError.self) {
            _ = try await clients.acquire(cell: "k1", credential: CellCredential(token: "token-one-1", certificateAuthority: "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"))
        }
        #expect(noCA?.message.hasPrefix("cell k1: the certificateAuthority of its credential cannot be read") == true, "\(noCA?.message ?? "")")
        let ca = try TestCA(name: "cluster CA")
        let (certificate, _) = try ca.issue(commonName: "kiln", server: false)
        let badKey = await #expect(throws: KilnError.self) {
            _ = try await clients.acquire(cell: "k1", credential: CellCredential(clientCertificate: certificate, clientKey: "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", certificateAuthority: ca.pem))
        }
        #expect(badKey?.message.hasPrefix("cell k1: the clientKey of its credential cannot be read") == true, "\(badKey?.message ?? "")")
        #expect(badKey?.message.contains("AAAA") == false)
        #expect(clients.count == 0)
    }
}
