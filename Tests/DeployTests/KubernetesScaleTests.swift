import Deploy
import Foundation
import KilnCore
import Testing

/// `KubernetesDeployer.scaleOut` and `scaleIn` against `FakeKubernetesAPIServer`: the scale
/// subresource, the deletion cost that steers which pods the ReplicaSet deletes, and what is
/// returned when the ReplicaSet chooses otherwise.
@Suite struct KubernetesScaleTests {
    let base = KubernetesDeployerTests()

    @Test func scaleOutRaisesTheCountAndReturnsOnlyTheNewPods() async throws {
        try await base.withFake { fake, cell in
            let deployer = KubernetesDeployerTests.deployer(fake)
            let spec = KubernetesDeployerTests.spec(replicas: 2)
            let running = try await deployer.start(spec, in: cell)
            fake.clearRequests()

            let new = try await deployer.scaleOut(spec, in: cell, running: running, adding: 3)
            #expect(new.count == 3)
            #expect(Set(new.map(\.id)).isDisjoint(with: running.map(\.id)))
            #expect(fake.pods(in: "kiln-demo").count == 5)
            let scale = try #require(fake.requests("PUT", "/apis/apps/v1/namespaces/kiln-demo/deployments/demo-v1/scale").first?.json)
            #expect(scale["kind"] as? String == "Scale" && scale["apiVersion"] as? String == "autoscaling/v1")
            #expect((scale["spec"] as? [String: Any])?["replicas"] as? Int == 5)
            #expect((scale["metadata"] as? [String: Any])?["name"] as? String == "demo-v1")
            // The Deployment records the count, so the cluster keeps it.
            let d = try #require(try await deployer.instances(of: "demo", in: cell)[1])
            #expect(d.count == 5)
            // New pods are made from the same template: same ReplicaSet.
            #expect(Set(fake.pods(in: "kiln-demo").map(\.replicaSet)).count == 1)
        }
    }

    @Test func scaleInMarksThePodsToGoAndTheReplicaSetDeletesExactlyThose() async throws {
        try await base.withFake { fake, cell in
            let deployer = KubernetesDeployerTests.deployer(fake)
            let spec = KubernetesDeployerTests.spec(replicas: 4)
            let running = try await deployer.start(spec, in: cell)
            // Keep the two oldest-named ones that the ReplicaSet would NOT pick by itself
            // (it deletes the newest first): the deletion cost must steer it.
            let byAge = fake.pods(in: "kiln-demo").sorted { $0.sequence < $1.sequence }.map(\.name)
            let keeping = running.filter { [byAge[2], byAge[3]].contains($0.id) }
            fake.clearRequests()

            let remaining = try await deployer.scaleIn(spec, in: cell, keeping: keeping)
            #expect(Set(remaining.map(\.id)) == Set(keeping.map(\.id)))
            #expect(Set(fake.pods(in: "kiln-demo").map(\.name)) == Set(keeping.map(\.id)))
            let patches = fake.requests.filter { $0.method == "PATCH" }
            #expect(Set(patches.map(\.path)) == Set([byAge[0], byAge[1]].map { "/api/v1/namespaces/kiln-demo/pods/\($0)" }))
            for p in patches {
                let annotations = (p.json?["metadata"] as? [String: Any])?["annotations"] as? [String: String]
                #expect(annotations == ["controller.kubernetes.io/pod-deletion-cost": "-1000"])
            }
            // The marks come before the count is lowered.
            let order = fake.requests.map(\.method)
            #expect(order.lastIndex(of: "PATCH")! < order.firstIndex(of: "PUT")!)
            #expect(remaining.allSatisfy { $0.healthy })
        }
    }

    @Test func aPodThatIsNotReadyGoesBeforeAMarkedOneAndScaleInSaysWhatRemains() async throws {
        try await base.withFake { fake, cell in
            let deployer = KubernetesDeployerTests.deployer(fake)
            let spec = KubernetesDeployerTests.spec(replicas: 1)
            let first = try await deployer.start(spec, in: cell)
            // A second pod that never becomes ready: the ReplicaSet deletes it first, whatever
            // the deletion cost says, so asking to keep it cannot be honoured.
            fake.setBehaviour(.neverReady, forImage: KubernetesDeployerTests.image)
            let second = try await deployer.scaleOut(spec, in: cell, running: first, adding: 1)
            let remaining = try await deployer.scaleIn(spec, in: cell, keeping: second)
            #expect(remaining.map(\.id) == first.map(\.id), "the ready pod stays: the caller records what remains")
            #expect(fake.pods(in: "kiln-demo").map(\.name) == first.map(\.id))
        }
    }

    @Test func aScaleOutWhosePodsCannotBePlacedGoesBackToTheRecordedCount() async throws {
        try await base.withFake { fake, cell in
            let deployer = KubernetesDeployerTests.deployer(fake)
            let spec = KubernetesDeployerTests.spec(replicas: 2)
            let running = try await deployer.start(spec, in: cell)
            fake.setBehaviour(.unschedulable, forImage: KubernetesDeployerTests.image)
            do {
                _ = try await deployer.scaleOut(spec, in: cell, running: running, adding: 2)
                Issue.record("pods that cannot be placed were taken as started")
            } catch let e as KilnError {
                #expect(e.message.contains("2 new pods with an address") && e.message.contains("Unschedulable"), "\(e.message)")
            }
            #expect(Set(fake.pods(in: "kiln-demo").map(\.name)) == Set(running.map(\.id)), "the unplaced pods went, the running ones stayed")
            let last = try #require(fake.requests("PUT", "/apis/apps/v1/namespaces/kiln-demo/deployments/demo-v1/scale").last?.json)
            #expect((last["spec"] as? [String: Any])?["replicas"] as? Int == 2)
        }
    }

    @Test func anRBACRefusalOfTheScaleSubresourceNamesTheRule() async throws {
        try await base.withFake { fake, cell in
            let deployer = KubernetesDeployerTests.deployer(fake)
            let spec = KubernetesDeployerTests.spec(replicas: 1)
            let running = try await deployer.start(spec, in: cell)
            fake.failNext("PUT", "/apis/apps/v1/namespaces/kiln-demo/deployments/demo-v1/scale", status: 403, reason: "Forbidden",
                          message: "deployments.apps \"demo-v1\" is forbidden: User \"system:serviceaccount:kiln:deployer\" cannot update resource \"deployments/scale\" in API group \"apps\" in the namespace \"kiln-demo\"")
            do {
                _ = try await deployer.scaleOut(spec, in: cell, running: running, adding: 1)
                Issue.record("the refusal was not reported")
            } catch let e as KilnError {
                #expect(e.httpStatus == 503)
                #expect(e.message.contains("cannot update resource \"deployments/scale\"") && e.message.contains("docs/kubernetes.md"), "\(e.message)")
            }
            #expect(fake.pods(in: "kiln-demo").count == 1)
        }
    }
}
