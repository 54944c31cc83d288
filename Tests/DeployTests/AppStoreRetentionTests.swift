import Deploy
import Etcd
import Foundation
import KilnCore
import KilnTestSupport
import Testing

/// Every write of an app through `AppStore` (deploy, lb, retire, discovery) prunes its oldest
/// stopped versions past its `keepVersions` (docs/retention.md). Against a real etcd.
@Suite("App versions past the app's number")
struct AppStoreRetentionTests {
    func version(_ n: Int, _ state: VersionState) -> AppVersion {
        AppVersion(number: n, build: "b\(n)", project: "shop", image: "r/shop@sha256:x", backend: "local", cells: ["c1"], settings: DeploySettings(port: 8080), state: state)
    }

    @Test func aDeployKeepsTheRecordAtItsNumberAndNeverReusesANumber() async throws {
        try await withEtcd { _, etcd in
            let store = AppStore(etcd: etcd)
            try await etcd.put(Keys().app("shop"), try KilnJSON.encode(App(name: "shop", versions: (1...12).map { version($0, .retired) } + [version(13, .live)], project: "shop")))
            // What the deploy plugin does: the next version, appended.
            let (written, made) = try await store.update("shop") { app -> AppVersion in
                let v = version(app.nextNumber, .deploying)
                app.versions.append(v)
                return v
            }
            #expect(made.number == 14)
            #expect(written.versions.map(\.number) == Array(5...14))
            let stored = try #require(try await store.app("shop"))
            #expect(stored.versions.map(\.number) == Array(5...14))

            // Lowered to 2: the running ones (13 live, 14 deploying) are all that stay.
            try await store.update("shop") { $0.keepVersions = 2 }
            #expect(try #require(try await store.app("shop")).versions.map(\.number) == [13, 14])
            // A change to a version pruned already changes nothing; the next number follows on.
            try await store.updateVersion("shop", 5) { $0.state = .live }
            let after = try #require(try await store.app("shop"))
            #expect(after.versions.map(\.number) == [13, 14] && after.nextNumber == 15)
        }
    }
}
