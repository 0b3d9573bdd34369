from services.tts.main import main

main()
