// swift-tools-version:6.2
import PackageDescription

let settings: [SwiftSetting] = [
    .strictMemorySafety(),
    .treatWarning("StrictMemorySafety", as: .error),
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
    .enableUpcomingFeature("InternalImportsByDefault"),
]

let package = Package(
    name: "swift-vtpm",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "vtpmd", targets: ["vtpmd"]),
        .library(name: "VTPM", targets: ["TPMWire", "StateStore", "TPMEngine", "VTPMServer"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.0"),
        .package(url: "https://github.com/apple/swift-crypto", "3.12.3"..<"5.0.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.0"),
    ],
    targets: [
        .systemLibrary(
            name: "CLibTPMS",
            pkgConfig: "libtpms",
            providers: [.apt(["libtpms-dev"])]
        ),
        .target(name: "CVTPMShims"),
        .target(name: "_VTPMPosix", dependencies: ["CVTPMShims"], swiftSettings: settings),
        .target(name: "TPMWire", swiftSettings: settings),
        .target(name: "TPMEngine", dependencies: ["CLibTPMS"], swiftSettings: settings),
        .target(
            name: "StateStore",
            dependencies: [
                "_VTPMPosix", "TPMWire",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "_CryptoExtras", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: settings
        ),
        .target(
            name: "VTPMServer",
            dependencies: [
                "_VTPMPosix", "TPMWire", "TPMEngine", "StateStore",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: settings
        ),
        .executableTarget(
            name: "vtpmd",
            dependencies: [
                "VTPMServer", "StateStore", "TPMWire",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: settings
        ),
        .executableTarget(
            name: "vtpm-demo",
            dependencies: ["TestSupport"],
            path: "qemu/demo",
            swiftSettings: settings
        ),
        .target(
            name: "TestSupport",
            dependencies: ["_VTPMPosix", "TPMWire"],
            path: "Tests/TestSupport",
            swiftSettings: settings
        ),
        .testTarget(name: "TPMWireTests", dependencies: ["TPMWire"], swiftSettings: settings),
        .testTarget(name: "StateStoreTests", dependencies: ["StateStore", "TestSupport"], swiftSettings: settings),
        .testTarget(
            name: "IntegrationTests",
            dependencies: ["TestSupport", "TPMWire", "StateStore"],
            swiftSettings: settings
        ),
    ]
)
