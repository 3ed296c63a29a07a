from modinspect.cli import main

main()
