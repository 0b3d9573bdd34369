from services.emotion.main import main

main()
