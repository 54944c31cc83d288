import Foundation
import KilnCore
import Testing

@Suite("Credential files")
struct CredentialsTests {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("kiln-cred-\(UUID().uuidString.prefix(8))")

    @Test("written with mode 0600 and read back; a file others may read is refused with the fix")
    func writeAndRead() throws {
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("etcd-root").path
        try CredentialFile.write("root:s3cret", to: path)
        let mode = try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int
        #expect(mode == 0o600)
        #expect(try CredentialFile.read(path) == "root:s3cret")
        #expect(try UserPassword.read(path) == UserPassword(user: "root", password: "s3cret"))
        #expect("\(try UserPassword.read(path))" == "root:***")

        chmod(path, 0o644)
        #expect { try CredentialFile.read(path) } throws: { "\($0)".contains("chmod 600 \(path)") }
        #expect { try CredentialFile.read(dir.appendingPathComponent("missing").path) } throws: { "\($0)".contains("cannot read") }

        // A link is not followed, even to a file of mode 0600.
        chmod(path, 0o600)
        let link = dir.appendingPathComponent("link").path
        try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: path)
        #expect { try CredentialFile.read(link) } throws: { "\($0)".contains("symbolic link") }
        #expect { try CredentialFile.read(dir.path) } throws: { "\($0)".contains("not a regular file") }

        // A folder others may write is refused: they could swap the file.
        chmod(dir.path, 0o777)
        #expect { try CredentialFile.read(path) } throws: { "\($0)".contains("chmod go-w \(dir.path)") }
        chmod(dir.path, 0o755)
        #expect(try CredentialFile.read(path) == "root:s3cret")
    }

    @Test("readOrCreate keeps the first secret; user:password needs both sides")
    func readOrCreate() throws {
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("admin-token").path
        let first = try CredentialFile.readOrCreate(path)
        #expect(first.count == 43)
        #expect(try CredentialFile.readOrCreate(path) == first)
        #expect(UserPassword("a:b:c") == UserPassword(user: "a", password: "b:c"))
        #expect(UserPassword(":b") == nil)
        #expect(UserPassword("a:") == nil)
        #expect(UserPassword("ab") == nil)
        #expect(Secret.random() != Secret.random())
        #expect(Secret.equal("abc", "abc") && !Secret.equal("abc", "abd") && !Secret.equal("abc", "abcd"))
    }
}
