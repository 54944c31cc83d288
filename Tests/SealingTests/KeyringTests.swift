import Foundation
import KilnCore
import KilnTestSupport
import Testing
@testable import Sealing

@Suite struct KeyringTests {
    @Test func sealsAndOpensBoundToItsName() throws {
        let temp = try TempDir("keyring"); let dir = temp.url; do {
            let path = dir.appendingPathComponent("key").path
            let id = try SecretsKeyring.create(at: path)
            let ring = try SecretsKeyring(path: path)
            #expect(ring.primaryID == id && id.count == 8)
            let sealed = try ring.seal("hunter2-hunter2", boundTo: "/kiln/secrets/projects/a/env/X")
            #expect(!sealed.box.contains("hunter2"))
            #expect(try ring.openString(sealed, boundTo: "/kiln/secrets/projects/a/env/X") == "hunter2-hunter2")
            // Moved to another project's key: refused.
            #expect(throws: KilnError.self) { try ring.open(sealed, boundTo: "/kiln/secrets/projects/b/env/X") }
            // Altered: refused.
            var bad = sealed
            var bytes = Data(base64Encoded: bad.box)!
            bytes[0] ^= 1
            bad.box = bytes.base64EncodedString()
            #expect(throws: KilnError.self) { try ring.open(bad, boundTo: "/kiln/secrets/projects/a/env/X") }
        }
    }

    @Test func aNewKeySealsAndTheOldOneStillOpensUntilDropped() throws {
        let temp = try TempDir("keyring"); let dir = temp.url; do {
            let path = dir.appendingPathComponent("key").path
            let old = try SecretsKeyring.create(at: path)
            let ring = try SecretsKeyring(path: path)
            let before = try ring.seal("value-one-1", boundTo: "k")
            let new = try SecretsKeyring.addKey(at: path)
            #expect(new != old)
            // The running keyring notices the file's change.
            #expect(ring.primaryID == new && ring.keyIDs == [new, old])
            let after = try ring.seal("value-two-2", boundTo: "k")
            #expect(after.kid == new)
            #expect(try ring.openString(before, boundTo: "k") == "value-one-1")
            try SecretsKeyring.keepOnly([], at: path)
            #expect(ring.keyIDs == [new])
            do {
                _ = try ring.open(before, boundTo: "k")
                Issue.record("a value under a dropped key opened")
            } catch let e as KilnError {
                #expect(e.message.contains(old) && e.message.contains("does not hold"))
            }
            #expect(try ring.openString(after, boundTo: "k") == "value-two-2")
        }
    }

    @Test func aRunningKeyringKeepsItsKeysWhenTheFileIsReplacedByAnotherFarms() throws {
        let temp = try TempDir("keyring"); let dir = temp.url; do {
            let path = dir.appendingPathComponent("key").path
            let ours = try SecretsKeyring.create(at: path)
            let ourLine = try CredentialFile.read(path)
            let ring = try SecretsKeyring(path: path)
            // Someone copies another farm's key file over ours while the scheduler runs.
            try CredentialFile.write(SecretsKeyring.newKeyLine(), to: path)
            #expect(ring.primaryID == ours && ring.keyIDs == [ours])
            #expect(try ring.seal("value-one-1", boundTo: "k").kid == ours)
            // A rotation (a key in front of ours) is taken.
            let rotated = SecretsKeyring.newKeyLine()
            try CredentialFile.write(rotated + "\n" + ourLine + "\n", to: path)
            let new = try SecretsKeyring.parse(rotated)[0].id
            #expect(ring.keyIDs == [new, ours])
        }
    }

    @Test func aMissingOrBadFileIsAClearError() throws {
        let temp = try TempDir("keyring"); let dir = temp.url; do {
            let path = dir.appendingPathComponent("nope").path
            do { _ = try SecretsKeyring(path: path); Issue.record("no error") } catch let e as KilnError {
                #expect(e.message.contains("kiln secrets key new"))
            }
            try CredentialFile.write("v1 c2hvcnQ=", to: path)
            do { _ = try SecretsKeyring(path: path); Issue.record("no error") } catch let e as KilnError {
                #expect(e.message.contains("line 1"))
            }
        }
    }

    @Test func knownHostsAndSecretRules() throws {
        let hosts = try KnownHosts.parse("[127.0.0.1]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\ngit.example.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl")
        #expect(hosts.entries(host: "127.0.0.1", port: 2222).count == 1)
        #expect(hosts.entries(host: "127.0.0.1", port: 22).isEmpty)
        #expect(hosts.entries(host: "GIT.example.com", port: 22).count == 1)
        #expect(throws: KilnError.self) { try KnownHosts.parse("|1|abc= ssh-ed25519 AAAA") }
        #expect(throws: KilnError.self) { try KnownHosts.parse("") }
        #expect(throws: KilnError.self) { try SecretRules.check("x", what: "v") }
        #expect(throws: KilnError.self) { try SecretRules.check("", what: "v") }
        try SecretRules.check("12345678", what: "v")
        #expect(throws: KilnError.self) { try SecretRules.name("1ABC") }
        #expect(throws: KilnError.self) { try SecretRules.name("PATH") }
        try SecretRules.name("NPM_TOKEN")
        try SecretRules.registryHost("127.0.0.1:5001")
        #expect(throws: KilnError.self) { try SecretRules.registryHost("evil/host") }
    }
}
